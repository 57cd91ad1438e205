"""Drawing a DeepEMD match: strongest flows, layout, caption, shading, distinct lines, picture formats."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from emdcli.io.images import Preprocess, load_image, model_view
from emdcli.matching.nodes import Nodes, match
from emdcli.render.explain import (
    CAPTION_MARGIN,
    DIM,
    GAP,
    MIN_PANEL,
    DrawnFlow,
    Explanation,
    caption_font,
    picture_format,
    render_match,
    save_picture,
    save_png,
    strongest_flows,
)
from tests.conftest import make_image

PREP = Preprocess(size=64, resize="squash")


def views(tmp_path: Path, prep: Preprocess = PREP) -> tuple[Image.Image, Image.Image]:
    q = make_image(tmp_path / "q.png", (220, 30, 30), seed=1)
    t = make_image(tmp_path / "t.png", (30, 40, 220), seed=2)
    return model_view(q, prep), model_view(t, prep)


def strip(exp: Explanation) -> int:
    """Height of the caption strip under the panels."""
    return exp.image.height - exp.panel


def fmaps(seed: int = 0, shape: tuple[int, int, int] = (8, 4, 4)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(shape).astype(np.float32), rng.random(shape).astype(np.float32)


def test_strongest_flows_order_ties_and_zeros() -> None:
    plan = np.array([[0.0, 0.3, 0.1], [0.1, 0.0, 0.5]])
    got = strongest_flows(plan, 10)
    assert got == (
        DrawnFlow(1, 2, pytest.approx(0.5)),
        DrawnFlow(0, 1, pytest.approx(0.3)),
        DrawnFlow(0, 2, pytest.approx(0.1)),  # tie with (1, 0): smaller flat index first
        DrawnFlow(1, 0, pytest.approx(0.1)),
    )
    assert [f.mass for f in strongest_flows(plan, 2)] == pytest.approx([0.5, 0.3])
    assert strongest_flows(plan, 0) == ()
    assert strongest_flows(np.zeros((2, 2)), 3) == ()
    with pytest.raises(ValueError):
        strongest_flows(plan, -1)


def test_strongest_flows_mass_is_a_fraction_of_the_total() -> None:
    flows = strongest_flows(np.array([[2.0, 0.0], [0.0, 6.0]]), 5)
    assert [(f.query_node, f.target_node, f.mass) for f in flows] == [(1, 1, 0.75), (0, 0, 0.25)]


def test_render_layout_content_and_flows(tmp_path: Path) -> None:
    q_img, t_img = views(tmp_path)
    q_map, t_map = fmaps()
    exp = render_match(q_img, t_img, q_map, t_map, lines=5, caption="q.png vs t.png (blue)", panel=96)
    out = save_png(exp, tmp_path / "match.png")

    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == (2 * 96 + GAP, 96 + strip(exp)) and strip(exp) > 0
        pixels = np.asarray(img.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100
    assert (pixels[:96] < 250).any(axis=2).mean() > 0.5  # the panels are mostly picture, not blank paper
    assert (pixels[96 + 2 :, :, :] < 128).all(axis=2).any()  # some dark caption text in the strip

    ref = match(Nodes.from_feature_map(q_map), Nodes.from_feature_map(t_map))
    order = np.argsort(-ref.flow.ravel(), kind="stable")[:5]
    m = ref.flow.shape[1]
    assert [(f.query_node, f.target_node) for f in exp.flows] == [(int(k // m), int(k % m)) for k in order]
    assert [f.mass for f in exp.flows] == pytest.approx(ref.flow.ravel()[order].tolist())
    assert exp.score == pytest.approx(ref.score)
    assert np.allclose(exp.query_weights, ref.weights_a) and np.allclose(exp.target_weights, ref.weights_b)
    assert exp.flows == strongest_flows(ref.flow, 5)
    assert [line.flow for line in exp.lines] == list(exp.flows) and [line.rank for line in exp.lines] == [1, 2, 3, 4, 5]


def test_default_panel_upscales_the_model_view_by_a_whole_factor(tmp_path: Path) -> None:
    q_img, t_img = views(tmp_path)
    exp = render_match(q_img, t_img, *fmaps(), lines=3)
    assert MIN_PANEL == 320 and exp.panel == 5 * PREP.size  # 64 px -> 320 px
    assert exp.image.mode == "RGB" and exp.image.size == (2 * exp.panel + GAP, exp.panel + strip(exp))
    assert len(exp.flows) == 3
    assert "Images upscaled 5x from 64 to 320 px." in " ".join(exp.caption)
    big_q, big_t = views(tmp_path / "big", Preprocess(size=224, resize="squash"))
    assert render_match(big_q, big_t, *fmaps(), lines=0).panel == 448  # the bundled model's 224 px: 2x
    same = render_match(q_img, t_img, *fmaps(), lines=0, panel=64)
    assert same.panel == 64 and not any("upscaled" in text for text in same.caption)


def test_every_drawn_line_is_visible_where_it_says(tmp_path: Path) -> None:
    q_img, t_img = views(tmp_path)
    q_map, t_map = fmaps(seed=3)
    with_lines = render_match(q_img, t_img, q_map, t_map, lines=4)
    without = render_match(q_img, t_img, q_map, t_map, lines=0)
    assert without.flows == () and without.lines == ()
    assert with_lines.image.width == without.image.width and with_lines.panel == without.panel
    before, after = (np.asarray(e.image)[: e.panel] for e in (without, with_lines))
    for line in with_lines.lines:
        for x, y in (line.start, line.end, line.points[len(line.points) // 2]):
            assert (before[round(y), round(x)] != after[round(y), round(x)]).any()
        left, top, _, _ = line.label_box  # the rank number sits in a box of the line's colour
        assert tuple(after[top + 1, left + 1]) == line.colour


def test_heavy_nodes_stay_as_they_are_and_light_ones_dim(tmp_path: Path) -> None:
    q_img, t_img = views(tmp_path)
    rng = np.random.default_rng(5)
    t_map = rng.random((8, 4, 4)).astype(np.float32) + 0.5
    q_map = np.full((8, 4, 4), 0.01, dtype=np.float32)
    q_map[:, 1, 2] = 10.0  # node 6: by far the largest dot product with the target's mean
    exp = render_match(q_img, t_img, q_map, t_map, lines=0, panel=PREP.size)
    assert int(np.argmax(exp.query_weights)) == 6 and exp.query_weights[6] > 0.9

    plain = np.asarray(q_img, dtype=np.float64)
    drawn = np.asarray(exp.image, dtype=np.float64)[: PREP.size, : PREP.size]
    cell = PREP.size // 4

    def at(img: np.ndarray, row: int, col: int) -> np.ndarray:
        return img[row * cell + cell // 2, col * cell + cell // 2]

    assert np.abs(at(drawn, 1, 2) - at(plain, 1, 2)).max() <= 1  # the heavy node's cell is left as it is
    for row, col in ((3, 0), (0, 0), (3, 3)):  # light cells: darker by the same factor in every channel
        lit = at(plain, row, col) > 40  # the channels with something to dim
        ratio = at(drawn, row, col)[lit] / at(plain, row, col)[lit]
        assert ratio.max() < 0.8 and ratio.min() >= 1 - DIM - 0.01 and np.ptp(ratio) < 0.03


def test_shading_leaves_the_picture_recognisable(tmp_path: Path) -> None:
    """No colour wash: on typical weights the panel stays within a mean 20/255 of the image (the
    old red-to-yellow tint at 60% opacity was about 40 away), and its pixels keep their order."""
    q_img, t_img = views(tmp_path)
    for seed in range(3):
        exp = render_match(q_img, t_img, *fmaps(seed), lines=0, panel=PREP.size)
        for img, x0 in ((q_img, 0), (t_img, PREP.size + GAP)):
            plain = np.asarray(img, dtype=np.float64)
            panel = np.asarray(exp.image, dtype=np.float64)[: PREP.size, x0 : x0 + PREP.size]
            assert np.abs(panel - plain).mean() < 20
            assert np.corrcoef(panel.ravel(), plain.ravel())[0, 1] > 0.95


def test_caption_fits_the_picture_and_says_what_the_score_is(tmp_path: Path) -> None:
    """At the default size for the bundled model (224 px images), the CLI's caption and legend
    are wrapped into lines that each fit the picture's width in the caption font; nothing is cut."""
    q_img, t_img = views(tmp_path, Preprocess(size=224, resize="squash"))
    caption = "strawberry_simple.png -> predicted food_fruit; closest example strawberry_simple_bw.png."
    exp = render_match(q_img, t_img, *fmaps(shape=(8, 7, 7)), lines=12, caption=caption, class_score=0.4251)
    font = caption_font()
    draw = ImageDraw.Draw(exp.image)
    assert len(exp.caption) >= 3
    for text in exp.caption:
        assert draw.textlength(text, font=font) <= exp.image.width - 2 * CAPTION_MARGIN, text
        assert not text.endswith("...")
    said = " ".join(exp.caption)
    assert said.startswith(f"EMD score {exp.score:.3f} between the query (left) and this one example (right);")
    assert "classify's class score 0.425 matches the query against the class's fitted node set." in said
    assert caption in said
    assert "12 distinct cell pairs" in said and "Bright = heavy node weight" in said
    text_rows = (np.asarray(exp.image)[exp.panel :] < 128).all(axis=2).any(axis=1)
    assert text_rows.sum() > 10 * len(exp.caption) - 10  # every text line is drawn in the strip
    assert strip(exp) < 150
    alone = render_match(q_img, t_img, *fmaps(shape=(8, 7, 7)), lines=0)
    assert " ".join(alone.caption).startswith(f"EMD score {alone.score:.3f} between the query (left) and this image")
    assert "class score" not in " ".join(alone.caption)


def _overlap(a: np.ndarray, b: np.ndarray, tol: float) -> float:
    """Fraction of ``a``'s inner points within ``tol`` px of ``b``."""
    inner = a[len(a) // 10 : len(a) - len(a) // 10]
    return float((np.sqrt(((inner[:, None] - b[None]) ** 2).sum(axis=2)).min(axis=1) < tol).mean())


@pytest.mark.parametrize("same", [False, True], ids=["random", "identical-maps"])
def test_twenty_lines_are_twenty_distinguishable_lines(tmp_path: Path, same: bool) -> None:
    """``--lines 20`` on the bundled model's 7 x 7 grid: 20 lines, none drawn along another.

    Identical maps make the plan match each cell with the same cell on the other side, so
    straight lines of one grid row would all lie on one horizontal line (the old picture
    showed ~7 of 20); distinct end points, separate paths and separate numbers remain."""
    q_img, t_img = views(tmp_path, Preprocess(size=224, resize="squash"))
    q_map, t_map = fmaps(seed=7, shape=(8, 7, 7))
    exp = render_match(q_img, t_img, q_map, q_map if same else t_map, lines=20)
    assert len(exp.flows) == len(exp.lines) == 20
    assert len({(f.query_node, f.target_node) for f in exp.flows}) == 20
    assert "the 20 strongest flows" in " ".join(exp.caption) and "20 distinct cell pairs" in " ".join(exp.caption)
    for i, a in enumerate(exp.lines):
        assert 0 <= a.start[0] < exp.panel <= exp.panel + GAP <= a.end[0] < exp.image.width
        assert a.label_box[2] <= exp.image.width and a.label_box[3] <= exp.panel
        path_a = np.asarray(a.points)
        assert ((path_a >= 0) & (path_a <= [exp.image.width, exp.panel])).all()
        for b in exp.lines[i + 1 :]:
            assert math.dist(a.start, b.start) >= 3 and math.dist(a.end, b.end) >= 3
            la, lb = a.label_box, b.label_box
            assert not (la[0] < lb[2] and lb[0] < la[2] and la[1] < lb[3] and lb[1] < la[3]), (a.rank, b.rank)
            tol = (a.width + b.width) / 2 + 1
            assert max(_overlap(path_a, np.asarray(b.points), tol), _overlap(np.asarray(b.points), path_a, tol)) < 0.5


def test_small_panel_long_caption_still_fits(tmp_path: Path) -> None:
    q_img, t_img = views(tmp_path)
    exp = render_match(q_img, t_img, *fmaps(), caption="x" * 500, panel=24)
    assert exp.image.width == 2 * 24 + GAP and len(exp.caption) == 8  # at most MAX_CAPTION_LINES
    font, draw = caption_font(), ImageDraw.Draw(exp.image)
    assert all(draw.textlength(text, font=font) <= exp.image.width - 2 * CAPTION_MARGIN for text in exp.caption)
    assert exp.caption[-1].endswith("...")


def test_bad_input_is_rejected(tmp_path: Path) -> None:
    q_img, t_img = views(tmp_path)
    q_map, t_map = fmaps()
    with pytest.raises(ValueError, match="channel"):
        render_match(q_img, t_img, q_map, t_map[:4])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        render_match(q_img, t_img, q_map.reshape(8, 16), t_map)
    with pytest.raises(ValueError, match="lines"):
        render_match(q_img, t_img, q_map, t_map, lines=-1)
    with pytest.raises(ValueError, match="panel"):
        render_match(q_img, t_img, q_map, t_map, panel=0)


def test_save_png_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    q_img, t_img = views(tmp_path / "img")
    exp = render_match(q_img, t_img, *fmaps(), lines=2)
    dest = tmp_path / "out" / "match.png"
    dest.parent.mkdir()
    dest.write_bytes(b"old contents, not a png")
    assert save_png(exp, str(dest)) == dest
    assert sorted(p.name for p in dest.parent.iterdir()) == ["match.png"]
    with Image.open(dest) as img:
        assert img.size == exp.image.size
        assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(exp.image))


def test_save_png_failure_keeps_the_old_file(tmp_path: Path) -> None:
    q_img, t_img = views(tmp_path / "img")
    exp = render_match(q_img, t_img, *fmaps(), lines=2)
    broken = Explanation(
        image=Image.new("RGB", (0, 0)),  # Pillow refuses to save an empty image
        score=exp.score,
        flows=exp.flows,
        query_weights=exp.query_weights,
        target_weights=exp.target_weights,
        panel=exp.panel,
    )
    dest = tmp_path / "out" / "match.png"
    dest.parent.mkdir()
    dest.write_bytes(b"previous")
    with pytest.raises(ValueError):
        save_png(broken, dest)
    assert dest.read_bytes() == b"previous"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["match.png"]


@pytest.mark.parametrize(
    ("name", "fmt", "magic"),
    [("m.png", "PNG", b"\x89PNG"), ("m.jpg", "JPEG", b"\xff\xd8"), ("m.JPEG", "JPEG", b"\xff\xd8"),
     ("m.webp", "WEBP", b"RIFF")],
)  # fmt: skip
def test_save_picture_follows_the_suffix(tmp_path: Path, name: str, fmt: str, magic: bytes) -> None:
    from PIL import features

    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    q_img, t_img = views(tmp_path / "img")
    exp = render_match(q_img, t_img, *fmaps(), lines=2)
    assert picture_format(name) == fmt
    dest = save_picture(exp, tmp_path / name)
    assert dest.read_bytes()[: len(magic)] == magic
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["img", name])
    with Image.open(dest) as img:
        assert img.format == fmt and img.mode == "RGB" and img.size == exp.image.size
        assert np.abs(np.asarray(img, dtype=np.float64) - np.asarray(exp.image, dtype=np.float64)).mean() < 4
    assert save_png(exp, tmp_path / "forced.jpg").read_bytes()[:4] == b"\x89PNG"  # save_png: PNG whatever the name


def test_save_picture_refuses_an_unknown_suffix(tmp_path: Path) -> None:
    q_img, t_img = views(tmp_path / "img")
    exp = render_match(q_img, t_img, *fmaps(), lines=0)
    for name in ("m.bmpx", "m", "m.gif"):
        with pytest.raises(ValueError, match=r"use one of \.png, \.jpg, \.jpeg"):
            save_picture(exp, tmp_path / name)
        assert not (tmp_path / name).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img"]


def test_end_to_end_with_the_tiny_model(tmp_path: Path, tiny_model: Path) -> None:
    from emdcli.model.backbone import Backbone

    backbone = Backbone(tiny_model, threads=1)
    prep = backbone.manifest.preprocess
    q = make_image(tmp_path / "red.png", (220, 30, 30), seed=1)
    t = make_image(tmp_path / "green.png", (30, 200, 40), seed=2)
    feats = backbone(np.stack([load_image(q, prep), load_image(t, prep)]))
    assert feats.shape == (2, 8, 4, 4)
    exp = render_match(model_view(q, prep), model_view(t, prep), feats[0], feats[1], lines=6, panel=128)
    out = save_png(exp, tmp_path / "explain.png")
    with Image.open(out) as img:
        assert img.size == (2 * 128 + GAP, 128 + strip(exp))
    assert 1 <= len(exp.flows) <= 6
    masses = [f.mass for f in exp.flows]
    assert masses == sorted(masses, reverse=True)
    assert sum(f.mass for f in exp.flows) <= 1.0 + 1e-9
    assert exp.query_weights.shape == (16,) and exp.query_weights.sum() == pytest.approx(1.0)


# --- the command ----------------------------------------------------------------------


def test_explain_command_against_a_support_folder(tiny_model: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from emdcli.cli import app
    from tests.conftest import make_folder

    support = make_folder(tmp_path / "support", {"red": 2, "green": 2, "blue": 2})
    query = make_folder(tmp_path / "q", {"green": 1}, seed=5) / "green" / "img_0.png"
    out = tmp_path / "match.png"
    res = CliRunner().invoke(app, ["explain", str(support), str(query), "-o", str(out), "--model", str(tiny_model)])
    assert res.exit_code == 0, res.output
    assert "predicted green" in res.stdout and "closest example" in res.stdout
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] == 2 * 320 + GAP  # the tiny model's 32 px input, 10x
    res = CliRunner().invoke(
        app, ["explain", str(support / "red" / "img_0.png"), str(query), "-o", str(out), "--model", str(tiny_model)]
    )
    assert res.exit_code == 0, res.output
    assert "vs" in res.stdout
    res = CliRunner().invoke(
        app, ["explain", str(support), str(query), "-o", str(tmp_path / "nope" / "m.png"), "--model", str(tiny_model)]
    )
    assert res.exit_code == 2 and "does not exist" in res.output


def test_classify_explain_dir_writes_one_picture_per_query(tiny_model: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from emdcli.cli import app
    from tests.conftest import make_folder

    support = make_folder(tmp_path / "support", {"red": 2, "green": 2})
    queries = make_folder(tmp_path / "queries", {"red": 2, "green": 1}, seed=3)
    from PIL import Image

    with Image.open(queries / "red" / "img_1.png") as im:  # a JPEG and a BMP beside the PNGs
        im.convert("RGB").save(queries / "red" / "img_1.jpg")
        im.convert("RGB").save(queries / "red" / "img_1.bmp")
    res = CliRunner().invoke(
        app, ["classify", str(support), str(queries), "--model", str(tiny_model), "-f", "csv",
              "--explain-dir", str(tmp_path / "pics")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    # Two queries are called img_0.png (one per class folder): each picture mirrors its query's
    # path and name (a .bmp gets .png added: pictures are PNG, JPEG or WebP), and the 'picture'
    # column says which picture belongs to which query.
    pictures = sorted(p for p in (tmp_path / "pics").rglob("*") if p.is_file())
    assert len(pictures) == 5
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    mirrored = {r["path"]: tmp_path / "pics" / r["path"].lstrip("/") for r in rows}
    assert {r["path"]: r["picture"] for r in rows} == {
        path: str(where) + (".png" if path.endswith(".bmp") else "") for path, where in mirrored.items()
    }
    assert sorted(Path(r["picture"]) for r in rows) == pictures
    formats = {}
    for picture in pictures:
        with Image.open(picture) as im:
            formats[picture.name] = im.format
    assert formats == {"img_0.png": "PNG", "img_1.png": "PNG", "img_1.jpg": "JPEG", "img_1.bmp.png": "PNG"}


def _explain(tiny_model: Path, *args: str) -> Any:
    from typer.testing import CliRunner

    from emdcli.cli import app

    return CliRunner().invoke(app, ["explain", *args, "--model", str(tiny_model)])


def test_explain_writes_the_format_its_output_suffix_names(tiny_model: Path, tmp_path: Path) -> None:
    from tests.conftest import make_folder

    support = make_folder(tmp_path / "support", {"red": 1, "green": 1})
    query = support / "red" / "img_0.png"
    for name, magic in (("m.jpg", b"\xff\xd8"), ("m.jpeg", b"\xff\xd8"), ("m.png", b"\x89PNG\r\n\x1a\n")):
        res = _explain(tiny_model, str(support / "green" / "img_0.png"), str(query), "-o", str(tmp_path / name))
        assert res.exit_code == 0, res.output
        assert (tmp_path / name).read_bytes()[: len(magic)] == magic, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left by the atomic write


def test_explain_refuses_an_unknown_suffix_before_any_work(tiny_model: Path, tmp_path: Path) -> None:
    from tests.conftest import make_folder

    support = make_folder(tmp_path / "support", {"red": 1, "green": 1})
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")  # reading it would fail with exit code 1: the suffix is checked first
    res = _explain(tiny_model, str(support), str(broken), "-o", str(tmp_path / "m.bmpx"))
    assert res.exit_code == 2, res.output
    assert "m.bmpx" in res.output and ".png, .jpg, .jpeg" in res.output
    assert not (tmp_path / "m.bmpx").exists()


def test_explain_caption_names_both_scores_against_a_support_folder(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    import emdcli.render.explain as explain_task
    from tests.conftest import make_folder

    drawn: list[Explanation] = []

    def keep(*args: Any, **kwargs: Any) -> Explanation:
        drawn.append(render_match(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(explain_task, "render_match", keep)
    support = make_folder(tmp_path / "support", {"red": 2, "green": 2, "blue": 2})
    query = make_folder(tmp_path / "q", {"green": 1}, seed=5) / "green" / "img_0.png"
    res = _explain(tiny_model, str(support), str(query), "-o", str(tmp_path / "m.png"))
    assert res.exit_code == 0, res.output
    class_score = re.search(r"class score (-?[0-9.]+)", res.stdout)
    assert class_score, res.stdout
    said = " ".join(drawn[0].caption)
    assert f"EMD score {drawn[0].score:.3f} between the query (left) and this one example (right)" in said
    assert (
        f"classify's class score {class_score.group(1)} matches the query against the class's fitted node set" in said
    )
    assert "predicted green" in said
    assert f"EMD score with this example {drawn[0].score:.3f}" in res.stdout

    res = _explain(tiny_model, str(support / "red" / "img_0.png"), str(query), "-o", str(tmp_path / "m.png"))
    assert res.exit_code == 0, res.output
    assert "class score" not in " ".join(drawn[1].caption)
