"""PNG decoding by Wuffs (the ``pywuffs`` package, the ``fast`` extra) where it gives Pillow's pixels.

Pillow decodes every image; for the PNGs below, when pywuffs is installed, Wuffs decodes the
pixels after Pillow has read the header (so Pillow's size limits hold). On 1 MP PNGs Wuffs took
about half Pillow's time, with other threads running meanwhile (docs/benchmarks.md, "INT8
backbone: speed"). Its PNG decoder skips the zlib checksum, as browsers using it do: a PNG whose
only fault is that checksum decodes here, where Pillow refuses it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import struct
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage
    from PIL.ImageFile import ImageFile

#: Who decodes the PNGs Wuffs can: ``"auto"``, Wuffs when pywuffs is installed, else Pillow;
#: ``"pillow"``, always Pillow (benchmarks compare the two).
PNG_DECODER = "auto"
#: Pillow modes (of an 8-bit PNG, as Pillow reads its header) that Wuffs decodes to Pillow's pixels.
WUFFS_MODES = frozenset({"L", "RGB", "RGBA"})
#: Chunks after which Pillow decodes: EXIF may rotate the image, acTL makes it an animation.
PILLOW_CHUNKS = frozenset({b"eXIf", b"acTL"})
#: glibc's malloc thresholds (bytes) set when Wuffs is first used: below MMAP a block comes from
#: the heap, and up to TRIM bytes freed at its top are kept. With glibc's defaults each image's
#: pixel and work buffers took fresh pages from the kernel: 2 threads decoded and resized
#: 148.2 1 MP PNGs a second with Wuffs, against 195.5 with these; Pillow's rate did not move
#: (benchmarks/png_decode.py, docs/benchmarks.md).
MALLOC_MMAP_THRESHOLD = 16 << 20
MALLOC_TRIM_THRESHOLD = 32 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters

_local = threading.local()  # each thread's Wuffs decoders, by pixel format


def chunk_types(data: bytes) -> set[bytes]:
    """The chunk types of the PNG file ``data`` (as far as its chunks are whole)."""
    types = set()
    at = 8  # after the signature
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        types.add(kind)
        at += 12 + length  # length, type, data, CRC
    return types


def _keep_freed_memory() -> None:
    """Set :data:`MALLOC_MMAP_THRESHOLD` and :data:`MALLOC_TRIM_THRESHOLD` in glibc's malloc, unless
    this is not glibc or $MALLOC_MMAP_THRESHOLD_ / $MALLOC_TRIM_THRESHOLD_ set them already."""
    if platform.libc_ver()[0] != "glibc" or {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)


@functools.lru_cache(maxsize=1)
def wuffs() -> Any:
    """The pywuffs package, or None where it is not installed (then Pillow decodes every PNG)."""
    try:
        import pywuffs
        import pywuffs.aux
    except ImportError:
        return None
    _keep_freed_memory()
    return pywuffs


def decoder_name() -> str:
    """Who decodes 8-bit PNGs here, for ``emdcli info``."""
    if wuffs() is None:
        return "Pillow (pip install 'emdcli[fast]' to decode PNGs with Wuffs, faster)"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"Wuffs (pywuffs {version('pywuffs')}); other images: Pillow"
    except PackageNotFoundError:
        return "Wuffs (pywuffs); other images: Pillow"


def _decoder(alpha: bool) -> Any:
    """This thread's Wuffs PNG decoder to BGR, or with ``alpha`` to BGRA (not premultiplied)."""
    key = "bgra" if alpha else "bgr"
    decoder = getattr(_local, key, None)
    if decoder is None:
        pw = wuffs()
        config = pw.aux.ImageDecoderConfig()
        config.enabled_decoders = [pw.ImageDecoderType.PNG]
        config.pixel_format = pw.PixelFormat.BGRA_NONPREMUL if alpha else pw.PixelFormat.BGR
        decoder = pw.aux.ImageDecoder(config)
        setattr(_local, key, decoder)
    return decoder


def wuffs_pixels(opened: ImageFile) -> PILImage | None:
    """The pixels of ``opened``, a PNG of 8-bit grey, RGB or RGBA whose header Pillow has read,
    decoded by Wuffs (grey comes back as RGB); None where Pillow decodes it: ``PNG_DECODER`` is
    ``"pillow"``, pywuffs is missing, another mode or bit depth, a transparency chunk, a chunk of
    :data:`PILLOW_CHUNKS` (before or after the pixels), or bytes Wuffs refuses (Pillow then words
    the error)."""
    if PNG_DECODER != "auto" or opened.format != "PNG" or "transparency" in opened.info or opened.fp is None:
        return None
    if len(opened.tile) != 1 or opened.mode not in WUFFS_MODES or opened.tile[0].args != opened.mode:
        return None  # e.g. RGB;16B: 16-bit samples, which Pillow reduces its own way
    if wuffs() is None:
        return None
    from PIL import Image

    fp = opened.fp
    at = fp.tell()
    fp.seek(0)
    data = fp.read()
    fp.seek(at)  # where Pillow left it, should Pillow decode after all
    if PILLOW_CHUNKS & chunk_types(data):
        return None
    alpha = opened.mode == "RGBA"
    result = _decoder(alpha).decode(data)
    pixels = result.pixbuf
    if result.error_message or pixels.dtype != "uint8" or pixels.shape != (opened.height, opened.width, 3 + alpha):
        return None
    mode, raw = ("RGBA", "BGRA") if alpha else ("RGB", "BGR")
    return Image.frombuffer(mode, opened.size, pixels, "raw", raw, 0, 1)
