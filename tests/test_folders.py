"""Reading labelled folders: balanced, unbalanced, empty classes, stray and hidden files."""

from __future__ import annotations

from pathlib import Path

import pytest

from emdcli.errors import DatasetError
from emdcli.io.folders import read_labelled_folder
from tests.conftest import make_folder, make_image


def test_balanced_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "s", {"red": 2, "green": 2, "blue": 2})
    folder = read_labelled_folder(root)
    assert folder.names == ("blue", "green", "red")
    assert [len(c.files) for c in folder.classes] == [2, 2, 2]
    assert folder.image_count == 6
    assert folder.empty == () and folder.ignored == ()


def test_unbalanced_folder_keeps_every_image(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "s", {"red": 5, "green": 1})
    folder = read_labelled_folder(root)
    assert {c.name: len(c.files) for c in folder.classes} == {"green": 1, "red": 5}


def test_images_in_nested_folders_belong_to_the_class(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "s", {"red": 1, "green": 1})
    make_image(root / "red" / "more" / "deep.png", (200, 0, 0), 1)
    folder = read_labelled_folder(root)
    red = next(c for c in folder.classes if c.name == "red")
    assert [p.name for p in red.files] == ["img_0.png", "deep.png"]


def test_empty_class_folder_is_reported_not_used(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "s", {"red": 2, "green": 2})
    (root / "empty").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "not_an_image.txt").write_text("hello")
    folder = read_labelled_folder(root)
    assert folder.names == ("green", "red")
    assert folder.empty == ("empty", "notes")
    assert [p.name for p in folder.ignored] == ["not_an_image.txt"]


def test_non_image_and_hidden_files_are_skipped(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "s", {"red": 1, "green": 1})
    (root / "red" / "readme.md").write_text("x")
    make_image(root / "red" / ".hidden.png", (200, 0, 0), 2)
    make_image(root / ".cache" / "x.png", (200, 0, 0), 3)
    make_image(root / "green" / ".thumbs" / "t.png", (0, 200, 0), 4)
    folder = read_labelled_folder(root)
    assert folder.names == ("green", "red")
    assert [p.name for c in folder.classes for p in c.files] == ["img_0.png", "img_0.png"]
    assert [p.name for p in folder.ignored] == ["readme.md"]


def test_uppercase_extensions_count_as_images(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "s", {"red": 1, "green": 1})
    (root / "red" / "img_0.png").rename(root / "red" / "IMG_0.PNG")
    assert read_labelled_folder(root).image_count == 2


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"red": 2}, "needs at least 2 class folders with images, found 1 class folder with images"),
        ({}, "found 0 class folders with images"),
    ],
)
def test_too_few_classes_is_a_usage_error(tmp_path: Path, layout: dict, message: str) -> None:
    root = make_folder(tmp_path / "s", layout)
    root.mkdir(exist_ok=True)
    with pytest.raises(DatasetError, match=message) as info:
        read_labelled_folder(root)
    assert info.value.exit_code == 2


def test_loose_images_get_a_hint(tmp_path: Path) -> None:
    make_image(tmp_path / "s" / "a.png", (1, 2, 3), 0)
    with pytest.raises(DatasetError) as info:
        read_labelled_folder(tmp_path / "s")
    assert "move them into one sub-folder per class" in (info.value.hint or "")


def test_missing_and_file_paths(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_labelled_folder(tmp_path / "nope")
    f = make_image(tmp_path / "x.png", (1, 2, 3), 0)
    with pytest.raises(DatasetError, match="got a file"):
        read_labelled_folder(f)
