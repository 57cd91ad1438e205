"""Decoding and preprocessing images; expanding query arguments."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emdcli.errors import DatasetError, ImageError
from emdcli.io.images import Preprocess, iter_query_paths, load_image
from tests.conftest import make_folder, make_image

PREP = Preprocess(size=16, resize="squash")


def test_output_shape_and_normalisation(tmp_path: Path) -> None:
    path = tmp_path / "white.png"
    Image.new("RGB", (30, 20), (255, 255, 255)).save(path)
    arr = load_image(path, PREP)
    assert arr.shape == (3, 16, 16) and arr.dtype == np.float32
    assert np.allclose(arr, 1.0)  # (1 - 0.5) / 0.5


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(path)
    assert np.allclose(load_image(path, PREP), 1.0)


def test_crop_keeps_the_centre(tmp_path: Path) -> None:
    img = Image.new("RGB", (48, 16), (0, 0, 0))
    img.paste((255, 255, 255), (16, 0, 32, 16))  # white centre square, black sides
    img.save(tmp_path / "wide.png")
    crop = load_image(tmp_path / "wide.png", Preprocess(size=16, resize="crop"))
    squash = load_image(tmp_path / "wide.png", Preprocess(size=16, resize="squash"))
    assert crop[:, 4:12, 4:12].min() > 0.9
    assert squash[:, :, 0].max() < -0.9


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # white on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    arr = load_image(path, Preprocess(size=20, resize="squash"))
    assert arr[:, :8, :].mean() > 0.8  # white is now on top
    assert arr[:, 12:, :].mean() < -0.8


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1500), (10, 200, 10)).save(path, quality=90)
    arr = load_image(path, Preprocess(size=32))
    assert arr.shape == (3, 32, 32)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a recognised image format"),
        (b"this is text, not a picture", "not a recognised image format"),
    ],
)
def test_unreadable_files_raise_image_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_image(path, PREP)


def test_truncated_jpeg_raises_image_error(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[:200])
    with pytest.raises(ImageError, match=r"cut\.jpg"):
        load_image(path, PREP)


def test_query_expansion_files_folders_and_stdin(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "q", {"red": 2, "green": 1})
    single = make_image(tmp_path / "one.png", (1, 2, 3), 0)
    (root / "red" / "notes.txt").write_text("x")
    stdin = io.StringIO(f"{single}\n\n{root / 'green' / 'img_0.png'}\r\n")
    got = list(iter_query_paths([str(root), str(single), "-"], stdin))
    assert [p.relative_to(tmp_path).as_posix() for p in got] == [
        "q/green/img_0.png", "q/red/img_0.png", "q/red/img_1.png", "one.png", "one.png", "q/green/img_0.png",
    ]  # fmt: skip


def test_query_expansion_is_lazy_and_checks_paths(tmp_path: Path) -> None:
    gen = iter_query_paths([str(tmp_path / "missing.png")])
    with pytest.raises(DatasetError, match="does not exist"):
        next(gen)
    with pytest.raises(DatasetError, match="no standard input"):
        next(iter_query_paths(["-"], None))


def test_corrupt_exif_is_our_error_or_ignored(tmp_path: Path) -> None:
    """Found by fuzzing: a damaged EXIF tag type made Pillow raise struct.error."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "emdcli"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", exif=exif.tobytes())
    for value in range(256):
        data = bytearray(buf.getvalue())
        data[41] = value
        path = tmp_path / f"exif_{value}.jpg"
        path.write_bytes(bytes(data))
        try:
            assert load_image(path, PREP).shape == (3, 16, 16)
        except ImageError as exc:
            assert exc.message.startswith(str(path))


def test_normalisation_is_exact_and_contiguous(tmp_path: Path) -> None:
    from emdcli.io.images import model_view

    prep = Preprocess(size=32, resize="squash", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    path = make_image(tmp_path / "a.png", (200, 120, 40), seed=3)
    got = load_image(path, prep)
    rgb = np.asarray(model_view(path, prep), dtype=np.float64) / 255.0  # (S, S, 3)
    expected = ((rgb - np.asarray(prep.mean)) / np.asarray(prep.std)).transpose(2, 0, 1)
    assert got.dtype == np.float32 and got.shape == (3, 32, 32) and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, atol=1e-5)
