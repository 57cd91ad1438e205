"""Finding images on disk (or in object storage) and turning one into a normalised input tensor."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Union

import numpy as np

from .. import defaults
from ..errors import DatasetError, ImageError
from .png import wuffs_pixels

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: File name endings read as images when a folder is walked (case-insensitive).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
#: The hint of every "no images found" error, from :data:`IMAGE_EXTENSIONS`.
IMAGE_NAMES_HINT = "image files end in " + ", ".join(sorted(IMAGE_EXTENSIONS))
#: Bumped whenever the decoding or resizing code changes its output, so that cached
#: features computed by an older version are not reused.
PREPROCESS_VERSION = 3  # 3: the reduced-scale resize (REDUCING_GAP)
#: An image at least twice this many times the model's input is first reduced by a whole factor
#: (a box filter: Pillow's ``reducing_gap``), then resampled bicubic from at least this many times
#: the input: half the time of one bicubic pass on a 1 MP PNG (docs/benchmarks.md, "The per-image
#: budget", with the accuracy it costs).
REDUCING_GAP = 1.5
#: Transparent pixels are composited onto this colour (clip-art convention: white paper).
BACKGROUND = (255, 255, 255)


#: How to get pyarrow, which reads URIs (and Parquet).
PYARROW_HINT = "pip install 'emdcli[ray]' (or pyarrow)"


def is_uri(text: str) -> bool:
    """Whether ``text`` names a file through a URI (``s3://``, ``gs://``, ``hdfs://``, ``file://`` ...)."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier()


def remote_filesystem(uri: str) -> tuple[object, str]:
    """pyarrow's filesystem for ``uri`` and the path inside it. UsageError when pyarrow is missing,
    DatasetError when it has no filesystem for the scheme (or cannot reach it)."""
    from ..errors import import_extra

    fs: Any = import_extra("pyarrow.fs", f"reading {uri.partition('://')[0]}:// paths", PYARROW_HINT)
    try:
        return fs.FileSystem.from_uri(uri)  # type: ignore[no-any-return]
    except Exception as exc:  # pyarrow's ArrowInvalid, OSError ...
        raise DatasetError(f"cannot open {uri} ({exc})",
                           hint="pyarrow reads s3://, gs://, abfs://, hdfs:// and file:// URIs") from None  # fmt: skip


@dataclass(frozen=True)
class RemoteImage:
    """An image named by a URI and read through pyarrow's filesystems (object storage)."""

    uri: str

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> PurePosixPath:
        """The folder part of the URI (its ``.name`` is the folder's name)."""
        return PurePosixPath(self.uri.partition("://")[2]).parent

    def open(self) -> IO[bytes]:
        """The file's bytes, read whole (images are small). OSError when it cannot be read."""
        filesystem, inner = remote_filesystem(self.uri)
        with filesystem.open_input_stream(inner) as stream:  # type: ignore[attr-defined]
            return io.BytesIO(stream.readall())


#: A local file, or an image in object storage.
ImagePath = Union[Path, RemoteImage]  # noqa: UP007 - a runtime alias on Python 3.10


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def is_image_name(path: ImagePath) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def iter_image_files(
    folder: Path | str, not_images: list[Path] | None = None, texts: dict[Path, str] | None = None
) -> Iterator[Path]:
    """Image files below ``folder``, recursively, in sorted order; hidden entries skipped.

    not_images: when given, the other (not hidden) files found are appended to it. texts: when given,
    each path yielded is mapped to its text as ``folder`` was written (``./a/b.png``, which a Path
    shortens to ``a/b.png``).
    """
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if is_hidden(path):
                continue
            if is_image_name(path):
                if texts is not None:
                    texts[path] = os.path.join(root, name)
                yield path
            elif not_images is not None:
                not_images.append(path)


def count_by_suffix(paths: Iterable[Path]) -> str:
    """``".heic 2, .txt 1"``: how many of ``paths`` end in each suffix, most first."""
    counts: dict[str, int] = {}
    for path in paths:
        key = path.suffix.lower() or "(no suffix)"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def iter_query_paths(
    sources: Iterable[str],
    stdin: Iterable[str] | None = None,
    not_images: list[Path] | None = None,
    texts: dict[Path, str] | None = None,
) -> Iterator[Path]:
    """Expand query arguments lazily: a file as is, a folder recursively, ``-`` from stdin.

    Lines read from stdin are paths, one per line; blank lines are skipped. They
    are only ever opened for reading. A missing argument raises DatasetError. texts: when given,
    each path yielded is mapped to its text as given (a Path drops a leading ``./``).
    """
    for source in sources:
        if source == "-":
            if stdin is None:
                raise DatasetError("'-' was given but there is no standard input to read paths from")
            for line in stdin:
                text = line.rstrip("\r\n")
                if text.strip():
                    if texts is not None:
                        texts[Path(text)] = text
                    yield Path(text)
            continue
        path = Path(source)
        if path.is_dir():
            yield from iter_image_files(source, not_images, texts)
        elif path.exists():
            if texts is not None:
                texts[path] = source
            yield path
        else:
            raise DatasetError(
                f"query path does not exist: {source}",
                hint="give image files, folders of images, or '-' to read paths from stdin",
            )


def query_paths(queries: list[str], stdin: Iterable[str] | None = None, not_images: list[Path] | None = None,
                texts: dict[Path, str] | None = None) -> Iterator[Path]:  # fmt: skip
    """The query arguments as a lazy stream of paths (:func:`iter_query_paths`), each argument
    checked now: DatasetError for a path that does not exist or for ``-`` given twice."""
    for src in queries:
        if src != "-" and not Path(src).exists():
            raise DatasetError(
                f"query path does not exist: {src}",
                hint="give image files, folders of images, or '-' to read paths from stdin",
            )
    if queries.count("-") > 1:
        raise DatasetError("'-' (read paths from stdin) may be given only once")
    return iter_query_paths(queries, stdin, not_images, texts)


def stdin_paths(stream: IO[str], null: bool = False) -> Iterator[str]:
    """Paths read from ``stream`` (stdin), one per line (or, with ``null``, each ended by a NUL byte
    as ``find -print0`` writes them); bytes that are not UTF-8 are kept as in file names
    (surrogateescape). Each path is yielded as soon as it is complete, so a slow pipe is read as it
    comes."""
    raw = getattr(stream, "buffer", None)
    if raw is None:
        yield from (stream.read().split("\0") if null else stream)
        return
    if not null:
        for line in raw:
            yield os.fsdecode(line.rstrip(b"\r\n"))
        return
    pending = b""
    while chunk := raw.read1(1 << 16):
        *done, pending = (pending + chunk).split(b"\0")
        yield from (os.fsdecode(p) for p in done)
    if pending:
        yield os.fsdecode(pending)


def image_folder(folder: Path, what: str) -> list[Path]:
    """Every image below ``folder``, sorted. DatasetError when it is not a folder or holds none;
    ``what`` names the folder in the message (``gallery``, ``normal``)."""
    if folder.is_file():
        raise DatasetError(f"{what} must be a folder of images, but {folder} is a file",
                           hint=f"give the folder that holds the {what} images")  # fmt: skip
    if not folder.is_dir():
        raise DatasetError(f"{what} folder does not exist: {folder}")
    paths = sorted(iter_image_files(folder))
    if not paths:
        raise DatasetError(f"no images found in {folder}", hint=IMAGE_NAMES_HINT)
    return paths


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the backbone's input.

    size: side in pixels of the square input. resize: ``"crop"`` scales the shorter
    side to ``size`` and takes the centre square; ``"squash"`` scales the whole
    image to size x size. mean/std: per-channel normalisation of [0, 1] values.
    """

    size: int = 224
    resize: str = "crop"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def key(self) -> str:
        """A short text that identifies this preprocessing (for caches and manifests)."""
        return f"v{PREPROCESS_VERSION}/{self.size}/{self.resize}/{self.mean}/{self.std}"


def max_pixels() -> int:
    """The largest image decoded, in pixels: ``$EMDCLI_MAX_PIXELS`` (a whole number, underscores or
    commas allowed), else ``defaults.MAX_PIXELS``. Raises ImageError for a value that is not one."""
    text = os.environ.get("EMDCLI_MAX_PIXELS", "").strip()
    if not text:
        return defaults.MAX_PIXELS
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ImageError(f"EMDCLI_MAX_PIXELS must be a positive whole number of pixels, got {text!r}")
    return value


def decode_rgb(path: ImagePath, size: int) -> PILImage:
    """``path`` decoded to an RGB Pillow image, upright by its EXIF orientation, transparency on
    white; a JPEG at the smallest reduced scale still at least ``size`` px. Pillow's errors pass
    through (:func:`model_view` words them)."""
    from PIL import Image, ImageOps

    limit = max_pixels()
    Image.MAX_IMAGE_PIXELS = limit  # Pillow warns above it (an error here) and refuses above twice it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. "Corrupt EXIF data": the pixels still decode
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(
            path.open() if isinstance(path, RemoteImage) else path
        ) as opened:  # closed even when decoding fails
            if opened.width * opened.height > limit:  # Pillow only warned, if another thread's catch_warnings
                raise Image.DecompressionBombError(limit)  # (process-wide) lifted the filter above meanwhile
            if opened.format == "JPEG":
                opened.draft("RGB", (size, size))  # decode large JPEGs at reduced scale
            fast = wuffs_pixels(opened)  # None unless a PNG that Wuffs decodes
            if fast is not None:
                img: PILImage = fast
            else:  # a PNG's EXIF may follow its pixels: getexif() then decodes them
                upright = opened.getexif().get(0x0112, 1) in (0, 1)  # EXIF orientation: already upright
                img = opened if upright else ImageOps.exif_transpose(opened)
                img.load()
    return as_rgb(img)  # decoded here: nobody else holds it


def as_rgb(img: PILImage) -> PILImage:
    """A decoded Pillow image as RGB: transparency on white (:data:`BACKGROUND`), 16- and 32-bit grey
    scaled to its maximum."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if img.mode == "I;16" or img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.max() > 0 else 1.0
        img = Image.fromarray((arr / top * 255).astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def fit_to_input(img: PILImage, prep: Preprocess, reducing_gap: float | None = REDUCING_GAP) -> PILImage:
    """A decoded RGB image (at least one pixel) resampled to the ``size`` x ``size`` input (centre
    square or squashed): bicubic, after a box reduction by a whole factor when the image is at least
    ``2 * reducing_gap`` times the input (None: one bicubic pass, as emdcli 0.2.0 did)."""
    from PIL import Image

    w, h = img.size
    box = (0.0, 0.0, float(w), float(h))
    if prep.resize == "crop":  # the centre square
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return img.resize((prep.size, prep.size), Image.Resampling.BICUBIC, box=box, reducing_gap=reducing_gap)


def model_view(path: ImagePath, prep: Preprocess) -> PILImage:
    """``path`` as the backbone sees it: an RGB ``size`` x ``size`` Pillow image (cropped or
    squashed, transparency on white). Raises ImageError for anything unreadable."""
    return _model_view(path, prep)[0]


def is_small(size: tuple[int, int], prep: Preprocess) -> bool:
    """Whether an image of ``size`` (width, height) is far below the model's input side
    (:data:`~emdcli.defaults.SMALL_IMAGE_SHARE` of it, on its shorter side)."""
    return min(size) < defaults.SMALL_IMAGE_SHARE * prep.size


def _model_view(path: ImagePath, prep: Preprocess) -> tuple[PILImage, tuple[int, int]]:
    """:func:`model_view`, and the size the image was decoded at (a large JPEG's reduced scale)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = decode_rgb(path, prep.size)
        if img.size[0] < 1 or img.size[1] < 1:
            raise ImageError(f"{path}: image has no pixels")
        decoded = img.size
        img = fit_to_input(img, prep)
    except ImageError:
        raise
    except UnidentifiedImageError:
        if is_image_name(path):
            raise ImageError(f"{path}: not a recognised image format") from None
        readable = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ImageError(f"{path}: not a recognised image format (emdcli reads {readable}; convert it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{path}: refused, its declared size is over {max_pixels():,} pixels (a decompression bomb?); "
            "if the image is real, raise the limit with EMDCLI_MAX_PIXELS"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ImageError(f"{path}: cannot read image ({reason})") from None
    except Exception as exc:  # Pillow's decoders and EXIF parser raise many other types on bad bytes
        raise ImageError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    return img, decoded


def picture_input(picture: Any, prep: Preprocess) -> np.ndarray:
    """An image already in memory as the normalised (3, size, size) float32 input: a Pillow image (any
    mode, made RGB as a decoded file is: :func:`as_rgb`) or an (H, W, 3) or (H, W) uint8 array (RGB or
    grey). ImageError for anything else."""
    from PIL import Image

    if isinstance(picture, np.ndarray):
        if picture.dtype != np.uint8 or picture.ndim not in (2, 3) or (picture.ndim == 3 and picture.shape[2] != 3):
            raise ImageError(f"an array image must be (H, W, 3) or (H, W) uint8, not {picture.shape} {picture.dtype}")
        picture = Image.fromarray(picture)
    if not isinstance(picture, Image.Image):
        raise ImageError(f"not an image: a {type(picture).__name__}")
    if picture.width < 1 or picture.height < 1:
        raise ImageError("image has no pixels")
    return to_input_array(fit_to_input(as_rgb(picture), prep), prep)


def to_input_array(img: PILImage, prep: Preprocess) -> np.ndarray:
    """An RGB ``size`` x ``size`` image as the normalised (3, size, size) float32 input."""
    std = np.asarray(prep.std, dtype=np.float32)
    scale = (1.0 / (255.0 * std)).reshape(3, 1, 1)
    offset = (np.asarray(prep.mean, dtype=np.float32) / std).reshape(3, 1, 1)
    channels = np.asarray(img).transpose(2, 0, 1)  # (3, size, size) uint8 view, 0..255
    pixels = np.empty(channels.shape, dtype=np.float32)
    np.multiply(channels, scale, out=pixels)  # one pass from uint8: 10x faster than converting first
    pixels -= offset
    return pixels


def load_image(path: ImagePath, prep: Preprocess) -> np.ndarray:
    """Decode ``path`` to a normalised (3, size, size) float32 array.

    Raises ImageError (with the file name) for anything that is not a readable image.
    """
    return to_input_array(model_view(path, prep), prep)


def load_image_judged(path: ImagePath, prep: Preprocess) -> tuple[np.ndarray, bool]:
    """:func:`load_image`, and whether the image is far too small to say much (:func:`is_small`)."""
    img, decoded = _model_view(path, prep)
    return to_input_array(img, prep), is_small(decoded, prep)
