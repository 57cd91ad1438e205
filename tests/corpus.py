"""A corpus of awkward and broken inputs, generated on the fly (no binary files in git)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _patch_ihdr(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header declares another size, with a valid CRC."""
    start = 8 + 8  # signature, then chunk length + type of IHDR
    body = bytearray(data[start : start + 13])
    body[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)) & 0xFFFFFFFF)
    return data[:start] + bytes(body) + crc + data[start + 17 :]


def red_square(size: int = 40) -> Image.Image:
    arr = np.full((size, size, 3), 255, dtype=np.uint8)
    arr[4:-4, 4:-4] = (220, 30, 30)
    return Image.fromarray(arr)


def make_queries(root: Path) -> dict[str, Path]:
    """Write one query file per case into ``root/red``; return {case: path}."""
    d = root / "red"
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def put(name: str, data: bytes, case: str) -> None:
        (d / name).write_bytes(data)
        out[case] = d / name

    good = _png_bytes(red_square())
    jpeg = io.BytesIO()
    red_square().save(jpeg, "JPEG", quality=90)
    put("zero_byte.png", b"", "zero-byte file")
    put("truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 3], "truncated JPEG")
    broken = bytearray(good)
    broken[29] ^= 0xFF  # inside IHDR: its CRC no longer matches
    put("bad_crc.png", bytes(broken), "PNG with a broken CRC")
    put("text.jpg", b"this is a shopping list, not a picture\n", "text file named .jpg")
    put("bomb.png", _patch_ihdr(good, 60000, 60000), "decompression bomb")
    put("one_pixel.png", _png_bytes(Image.new("RGB", (1, 1), (220, 30, 30))), "1x1 image")
    cmyk = io.BytesIO()
    red_square().convert("CMYK").save(cmyk, "JPEG")
    put("cmyk.jpg", cmyk.getvalue(), "CMYK JPEG")
    grey = (np.asarray(red_square().convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    put("grey16.png", _png_bytes(Image.fromarray(grey)), "16-bit greyscale PNG")
    pal = red_square().convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.info["transparency"] = 0
    put("palette.png", _png_bytes(pal), "palette PNG with transparency")
    gif = io.BytesIO()
    frames = [red_square(), Image.new("RGB", (40, 40), (0, 0, 255))]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated.gif", gif.getvalue(), "animated GIF")
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = io.BytesIO()
    red_square().rotate(90).save(rotated, "JPEG", exif=exif.tobytes(), quality=95)
    put("rotated.jpg", rotated.getvalue(), "EXIF-rotated JPEG")
    put("unreadable.png", good, "unreadable file (permissions)")
    os.chmod(d / "unreadable.png", 0)
    (d / "broken_link.png").symlink_to(d / "gone.png")
    out["broken symlink"] = d / "broken_link.png"
    (d / "loop_a.png").symlink_to(d / "loop_b.png")
    (d / "loop_b.png").symlink_to(d / "loop_a.png")
    out["symlink loop"] = d / "loop_a.png"
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    put(name, good, "non-UTF-8 file name")
    folder = d / "x.jpg"
    folder.mkdir()
    (folder / "inside.png").write_bytes(good)
    out["folder named x.jpg"] = folder / "inside.png"
    deep = d.joinpath(*["a_rather_long_folder_name_" + str(i) for i in range(30)])
    deep.mkdir(parents=True)
    (deep / "deep.png").write_bytes(good)
    out["very long path"] = deep / "deep.png"
    return out
