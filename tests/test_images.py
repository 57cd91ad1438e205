"""Decoding and preprocessing images; expanding query arguments."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from emdcli.errors import DatasetError, ImageError
from emdcli.io.images import REDUCING_GAP, Preprocess, fit_to_input, iter_query_paths, load_image
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


def _photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: a resize that changes anything shows it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def test_reduced_scale_resize_keeps_small_images_and_barely_moves_large_ones() -> None:
    prep = Preprocess()  # 224, crop, as the bundled model
    # under 2 x REDUCING_GAP x 224 = 672 px on the shorter side: the same pixels as one bicubic pass
    small = _photo_like(900, 600)
    assert np.array_equal(np.asarray(fit_to_input(small, prep)), np.asarray(fit_to_input(small, prep, None)))
    large = _photo_like(1224, 816)
    reduced = np.asarray(fit_to_input(large, prep), dtype=float)
    one_pass = np.asarray(fit_to_input(large, prep, None), dtype=float)
    assert reduced.shape == one_pass.shape == (224, 224, 3)
    assert not np.array_equal(reduced, one_pass)  # the reduction ran
    assert np.abs(reduced - one_pass).mean() < 2.0  # within two grey levels on average, even on noise
    assert REDUCING_GAP == 1.5  # the figures of docs/benchmarks.md were measured with it


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


def _adam7_png(rgb: np.ndarray) -> bytes:
    """An interlaced (Adam7) 8-bit RGB PNG of the (H, W, 3) uint8 ``rgb`` (Pillow writes none)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w, _ = rgb.shape
    raw = b""
    passes = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
    for y0, x0, dy, dx in passes:  # first row, first column, row step, column step
        sub = rgb[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\0" + row.tobytes() for row in sub)  # filter 0 on every row
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)  # 8-bit RGB, Adam7
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _png_cases(tmp_path: Path) -> list[Path]:
    """PNGs of every kind decode_rgb meets: 8-bit grey, RGB and RGBA (plain, interlaced, with a gamma
    chunk: Wuffs' path), those Pillow keeps (grey + alpha, palette with transparency, 16-bit, RGB
    with a transparent colour, EXIF-rotated, animated), and a truncated one (Wuffs refuses it,
    Pillow words why)."""
    rng = np.random.default_rng(0)
    rgba = Image.fromarray((rng.random((37, 53, 4)) * 255).astype(np.uint8), "RGBA")
    gamma = PngImagePlugin.PngInfo()
    gamma.add(b"gAMA", (100000).to_bytes(4, "big"))  # gamma 1.0: neither decoder applies it
    cases = {
        "rgb.png": (rgba.convert("RGB"), {}),
        "rgba.png": (rgba, {}),
        "grey.png": (rgba.convert("L"), {}),
        "grey_alpha.png": (rgba.convert("LA"), {}),
        "palette.png": (rgba.convert("P"), {"transparency": 0}),
        "deep.png": (Image.fromarray((rng.random((37, 53)) * 65535).astype(np.uint16)), {}),
        "keyed.png": (rgba.convert("RGB"), {"transparency": (0, 0, 0)}),
        "gamma.png": (rgba.convert("RGB"), {"pnginfo": gamma}),
        "animated.png": (rgba.convert("RGB"), {"save_all": True, "append_images": [rgba.convert("RGB")]}),
    }
    paths = []
    for name, (img, options) in cases.items():
        img.save(tmp_path / name, **options)
        paths.append(tmp_path / name)
    (tmp_path / "interlaced.png").write_bytes(_adam7_png(np.asarray(rgba.convert("RGB"))[:, ::-1]))
    paths.insert(2, tmp_path / "interlaced.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate: the pixels stand on their side
    rgba.convert("RGB").save(tmp_path / "rotated.png", exif=exif)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((tmp_path / "rgb.png").read_bytes()[:-200])
    return [*paths, tmp_path / "rotated.png", truncated]


def test_wuffs_and_pillow_decode_pngs_to_the_same_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pywuffs", reason="pywuffs (the fast extra) is not installed")
    import emdcli.io.png as png

    prep = Preprocess(size=32)
    cases = _png_cases(tmp_path)

    def decode_all(decoder: str) -> list[np.ndarray | str]:
        monkeypatch.setattr(png, "PNG_DECODER", decoder)
        out: list[np.ndarray | str] = []
        for path in cases:
            try:
                out.append(load_image(path, prep))
            except ImageError as exc:
                out.append(exc.message)
        return out

    real = png._decoder
    called: list[str] = []

    class Spy:
        def __init__(self, alpha: bool) -> None:
            self.inner = real(alpha)

        def decode(self, data: bytes) -> object:
            called.append(next(p.name for p in cases if p.read_bytes() == data))
            return self.inner.decode(data)

    monkeypatch.setattr(png, "_decoder", Spy)
    fast, pillow = decode_all("auto"), decode_all("pillow")
    assert called == ["rgb.png", "rgba.png", "interlaced.png", "grey.png", "gamma.png", "truncated.png"]
    with Image.open(tmp_path / "interlaced.png") as interlaced:
        assert interlaced.info.get("interlace") == 1
    rotated = pillow[cases.index(tmp_path / "rotated.png")]
    assert isinstance(rotated, np.ndarray) and rotated.shape == (3, 32, 32)
    for path, a, b in zip(cases, fast, pillow, strict=True):
        if isinstance(b, str):
            assert a == b, path.name  # the same words for a bad file: Pillow says them
        else:
            assert isinstance(a, np.ndarray), path.name
            np.testing.assert_array_equal(a, b, err_msg=path.name)
    assert isinstance(pillow[-1], str) and "truncated.png" in pillow[-1]


def test_a_png_whose_only_fault_is_its_zlib_checksum_decodes_with_wuffs_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As emdcli/io/png.py says: Wuffs skips the checksum, Pillow refuses the file."""
    pytest.importorskip("pywuffs", reason="pywuffs (the fast extra) is not installed")
    import struct
    import zlib

    import emdcli.io.png as png

    Image.fromarray((np.random.default_rng(0).random((37, 53, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    data = bytearray((tmp_path / "a.png").read_bytes())
    at = data.index(b"IDAT") - 4
    end = at + 8 + struct.unpack_from(">I", data, at)[0]
    data[end - 1] ^= 0xFF  # the last byte of the zlib stream's Adler-32
    struct.pack_into(">I", data, end, zlib.crc32(bytes(data[at + 4 : end])))  # the chunk's CRC still right
    (tmp_path / "a.png").write_bytes(bytes(data))
    monkeypatch.setattr(png, "PNG_DECODER", "pillow")
    with pytest.raises(ImageError, match="broken data stream"):
        load_image(tmp_path / "a.png", PREP)
    monkeypatch.setattr(png, "PNG_DECODER", "auto")
    assert load_image(tmp_path / "a.png", PREP).shape == (3, 16, 16)


def test_png_chunk_types_walks_the_chunks_not_the_bytes(tmp_path: Path) -> None:
    from emdcli.io.png import chunk_types

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (4, 3), (1, 2, 3)).save(tmp_path / "a.png", exif=exif)
    data = (tmp_path / "a.png").read_bytes()
    assert {b"IHDR", b"IDAT", b"IEND", b"eXIf"} <= chunk_types(data)
    assert chunk_types(data[:-5]) == chunk_types(data) - {b"IEND"}  # a cut-off end: what is whole
    Image.new("RGB", (4, 3)).save(tmp_path / "b.png")
    assert b"eXIf" not in chunk_types((tmp_path / "b.png").read_bytes())


def test_glibc_keeps_freed_memory_unless_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import platform

    import emdcli.io.png as png

    calls: list[tuple[int, int]] = []

    class FakeLibc:
        @staticmethod
        def mallopt(param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc)
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    png._keep_freed_memory()
    assert calls == [(-3, png.MALLOC_MMAP_THRESHOLD), (-1, png.MALLOC_TRIM_THRESHOLD)]
    calls.clear()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")  # the user's own setting wins
    png._keep_freed_memory()
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))  # musl, macOS, Windows: not touched
    png._keep_freed_memory()
    assert calls == []
