"""Drawing a DeepEMD match: strongest flows, layout, heat map, lines, atomic PNG writing."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emdcli.io.images import Preprocess, load_image, model_view
from emdcli.matching.nodes import Nodes, match
from emdcli.tasks.explain import CAPTION_HEIGHT, GAP, DrawnFlow, Explanation, render_match, save_png, strongest_flows
from tests.conftest import make_image

PREP = Preprocess(size=64, resize="squash")


def views(tmp_path: Path) -> tuple[Image.Image, Image.Image]:
    q = make_image(tmp_path / "q.png", (220, 30, 30), seed=1)
    t = make_image(tmp_path / "t.png", (30, 40, 220), seed=2)
    return model_view(q, PREP), model_view(t, PREP)


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
        assert img.size == (2 * 96 + GAP, 96 + CAPTION_HEIGHT)
        pixels = np.asarray(img.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100
    assert (pixels < 250).any(axis=2).mean() > 0.5  # mostly picture, not blank paper
    assert (pixels[96 + 2 :, :, :] < 128).all(axis=2).any()  # some dark caption text in the strip

    ref = match(Nodes.from_feature_map(q_map), Nodes.from_feature_map(t_map))
    order = np.argsort(-ref.flow.ravel(), kind="stable")[:5]
    m = ref.flow.shape[1]
    assert [(f.query_node, f.target_node) for f in exp.flows] == [(int(k // m), int(k % m)) for k in order]
    assert [f.mass for f in exp.flows] == pytest.approx(ref.flow.ravel()[order].tolist())
    assert exp.score == pytest.approx(ref.score)
    assert np.allclose(exp.query_weights, ref.weights_a) and np.allclose(exp.target_weights, ref.weights_b)
    assert exp.flows == strongest_flows(ref.flow, 5)


def test_default_panel_keeps_the_model_size(tmp_path: Path) -> None:
    q_img, t_img = views(tmp_path)
    exp = render_match(q_img, t_img, *fmaps(), lines=3)
    assert exp.panel == PREP.size
    assert exp.image.mode == "RGB" and exp.image.size == (2 * PREP.size + GAP, PREP.size + CAPTION_HEIGHT)
    assert len(exp.flows) == 3


def test_strongest_line_is_drawn(tmp_path: Path) -> None:
    q_img, t_img = views(tmp_path)
    q_map, t_map = fmaps(seed=3)
    with_lines = render_match(q_img, t_img, q_map, t_map, lines=4)
    without = render_match(q_img, t_img, q_map, t_map, lines=0)
    assert without.flows == ()
    top = with_lines.flows[0]
    s, w = PREP.size, q_map.shape[2]
    qx, qy = (top.query_node % w + 0.5) * s / w, (top.query_node // w + 0.5) * s / w
    tx, ty = s + GAP + (top.target_node % w + 0.5) * s / w, (top.target_node // w + 0.5) * s / w
    mid = (round((qx + tx) / 2), round((qy + ty) / 2))
    assert with_lines.image.getpixel(mid) != without.image.getpixel(mid)
    # the node cell centres themselves carry the end dots
    assert with_lines.image.getpixel((round(qx), round(qy))) != without.image.getpixel((round(qx), round(qy)))


def test_heat_map_tints_the_heavy_node(tmp_path: Path) -> None:
    q_img, t_img = views(tmp_path)
    rng = np.random.default_rng(5)
    t_map = rng.random((8, 4, 4)).astype(np.float32) + 0.5
    q_map = np.full((8, 4, 4), 0.01, dtype=np.float32)
    q_map[:, 1, 2] = 10.0  # node 6: by far the largest dot product with the target's mean
    exp = render_match(q_img, t_img, q_map, t_map, lines=0)
    assert int(np.argmax(exp.query_weights)) == 6 and exp.query_weights[6] > 0.9

    plain = np.asarray(q_img, dtype=np.float64)
    drawn = np.asarray(exp.image, dtype=np.float64)[: PREP.size, : PREP.size]
    tint = np.abs(drawn - plain).sum(axis=2)
    cell = PREP.size // 4

    def at(row: int, col: int) -> float:
        return float(tint[row * cell + cell // 2, col * cell + cell // 2])

    assert at(1, 2) > 100  # the heavy node's cell centre is strongly tinted
    assert at(1, 2) > 10 * max(at(3, 0), at(0, 0), at(3, 3))  # low-weight cells barely change


def test_small_panel_long_caption_still_fits(tmp_path: Path) -> None:
    q_img, t_img = views(tmp_path)
    exp = render_match(q_img, t_img, *fmaps(), caption="x" * 500, panel=24)
    assert exp.image.size == (2 * 24 + GAP, 24 + CAPTION_HEIGHT)


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
        assert img.size == (2 * 128 + GAP, 128 + CAPTION_HEIGHT)
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
    res = CliRunner().invoke(app, ["explain", str(query), str(support), "-o", str(out), "--model", str(tiny_model)])
    assert res.exit_code == 0, res.output
    assert "predicted green" in res.stdout and "closest example" in res.stdout
    with Image.open(out) as img:
        assert img.size == (2 * 32 + GAP, 32 + CAPTION_HEIGHT)  # the tiny model's 32 px input
    res = CliRunner().invoke(
        app, ["explain", str(query), str(support / "red" / "img_0.png"), "-o", str(out), "--model", str(tiny_model)]
    )
    assert res.exit_code == 0, res.output
    assert "vs" in res.stdout
    res = CliRunner().invoke(
        app, ["explain", str(query), str(support), "-o", str(tmp_path / "nope" / "m.png"), "--model", str(tiny_model)]
    )
    assert res.exit_code == 2 and "does not exist" in res.output


def test_classify_explain_dir_writes_one_picture_per_query(tiny_model: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from emdcli.cli import app
    from tests.conftest import make_folder

    support = make_folder(tmp_path / "support", {"red": 2, "green": 2})
    queries = make_folder(tmp_path / "queries", {"red": 2, "green": 1}, seed=3)
    res = CliRunner().invoke(
        app, ["classify", str(support), str(queries), "--model", str(tiny_model), "-f", "csv",
              "--explain-dir", str(tmp_path / "pics")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    # Two queries are called img_0.png (one per class folder): each picture mirrors its query's
    # path, and the 'picture' column says which picture belongs to which query.
    pictures = sorted(p for p in (tmp_path / "pics").rglob("*.png"))
    assert len(pictures) == 3
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert {r["path"]: r["picture"] for r in rows} == {
        r["path"]: str(tmp_path / "pics" / r["path"].lstrip("/")) + ".png" for r in rows
    }
    assert sorted(Path(r["picture"]) for r in rows) == pictures
