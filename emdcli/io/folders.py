"""Reading a labelled folder: one sub-folder per class, images inside (recursively)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from .images import is_hidden, is_image_name, iter_image_files


@dataclass(frozen=True)
class ClassFolder:
    """One class: its name (the folder's) and its image files, sorted."""

    name: str
    files: tuple[Path, ...]


@dataclass(frozen=True)
class LabelledFolder:
    """A folder of class folders.

    classes: the classes that hold at least one image, sorted by name.
    empty: names of class folders without any image (skipped).
    ignored: files in class folders that were not read because their names are not images' names.
    loose: files lying directly in ``root``, outside any class folder (not used).
    """

    root: Path
    classes: tuple[ClassFolder, ...]
    empty: tuple[str, ...]
    ignored: tuple[Path, ...]
    loose: tuple[Path, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def image_count(self) -> int:
        return sum(len(c.files) for c in self.classes)


def read_labelled_folder(root: Path, min_classes: int = 2) -> LabelledFolder:
    """Read ``root/CLASS/...image`` files. Hidden files and folders are skipped.

    Raises DatasetError when ``root`` is not a folder, when two class folders differ
    only by case, or when fewer than ``min_classes`` classes hold images.
    """
    if not root.exists():
        raise DatasetError(f"support folder does not exist: {root}")
    if not root.is_dir():
        raise DatasetError(f"support must be a folder with one sub-folder per class, got a file: {root}")
    classes: list[ClassFolder] = []
    empty: list[str] = []
    ignored: list[Path] = []
    loose: list[Path] = []
    for entry in sorted(root.iterdir()):
        if is_hidden(entry):
            continue
        if entry.is_dir():
            files = tuple(iter_image_files(entry, ignored))
            if files:
                classes.append(ClassFolder(entry.name, files))
            else:
                empty.append(entry.name)
        elif entry.is_file():
            loose.append(entry)
    seen: dict[str, str] = {}
    for c in classes:
        other = seen.setdefault(c.name.casefold(), c.name)
        if other != c.name:
            raise DatasetError(
                f"{root}: class folders {other!r} and {c.name!r} differ only by case",
                hint="merge or rename them: they would be one class on a case-insensitive disk",
            )
    if len(classes) < min_classes:
        hint = "arrange examples as SUPPORT/CLASS_NAME/image.jpg, at least two classes"
        images = [p for p in loose if is_image_name(p)]
        if images:
            hint = f"{len(images)} images lie directly in {root}; move them into one sub-folder per class"
        found = f"{len(classes)} class folder{'s' if len(classes) != 1 else ''} with images"
        raise DatasetError(f"{root}: needs at least {min_classes} class folders with images, found {found}", hint)
    return LabelledFolder(root, tuple(classes), tuple(empty), tuple(ignored), tuple(loose))
