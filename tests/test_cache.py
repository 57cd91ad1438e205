"""The feature cache: content keys, namespaces, damaged entries, atomic writes, pruning."""

from __future__ import annotations

import ast
import errno
import hashlib
import io
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest

from emdcli.features import cache as cache_mod
from emdcli.features.cache import FeatureCache
from emdcli.io import files as files_mod
from emdcli.io.files import default_cache_dir, sha256_file

NS = "0123abcd/224/crop/(0.5, 0.5, 0.5)/(0.5, 0.5, 0.5)"


def image_file(path: Path, payload: bytes) -> Path:
    """A stand-in image: the cache only ever reads its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def feature_map(seed: int, shape: tuple[int, ...] = (8, 4, 4)) -> np.ndarray:
    """A (C, H, W) float32 feature map."""
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def leftovers(folder: Path) -> list[str]:
    """Names in ``folder`` that are not finished entries (temporary files)."""
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".npy")


def test_round_trip(tmp_path: Path) -> None:
    img = image_file(tmp_path / "img" / "a.jpg", b"image a")
    cache = FeatureCache(NS, root=tmp_path / "cache")
    feats = feature_map(0)

    assert cache.get(img) is None
    cache.put(img, feats)
    got = cache.get(img)

    assert got is not None
    assert got.dtype == np.float32 and got.shape == (8, 4, 4)
    np.testing.assert_array_equal(got, feats)
    assert (cache.hits, cache.misses, cache.write_errors) == (1, 1, 0)
    digest = hashlib.sha256(b"image a").hexdigest()
    assert cache.entry_path(digest).is_file()
    assert cache.entry_path(digest).parent.parent == tmp_path / "cache" / "features"


def test_put_casts_to_float32(tmp_path: Path) -> None:
    img = image_file(tmp_path / "a.png", b"a")
    cache = FeatureCache(NS, root=tmp_path / "cache")
    feats = np.asfortranarray(np.arange(24, dtype=np.float64).reshape(2, 3, 4))

    cache.put(img, feats)
    got = cache.get(img)

    assert got is not None and got.dtype == np.float32
    np.testing.assert_array_equal(got, feats.astype(np.float32))


def test_key_is_the_content_not_the_name(tmp_path: Path) -> None:
    img = image_file(tmp_path / "a.jpg", b"original bytes")
    cache = FeatureCache(NS, root=tmp_path / "cache")
    feats = feature_map(1)
    cache.put(img, feats)

    copy = tmp_path / "elsewhere" / "renamed.png"
    copy.parent.mkdir()
    shutil.copyfile(img, copy)
    hit = cache.get(copy)
    assert hit is not None
    np.testing.assert_array_equal(hit, feats)

    # Same size, other bytes, later mtime: an edited file is a new key.
    img.write_bytes(b"Original bytes")
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.get(img) is None
    assert cache.get(copy) is not None  # the original content is still cached
    assert (cache.hits, cache.misses) == (2, 1)


def test_namespaces_do_not_share_entries(tmp_path: Path) -> None:
    img = image_file(tmp_path / "a.jpg", b"shared image")
    root = tmp_path / "cache"
    model_a = FeatureCache("sha-a/224/crop", root=root)
    model_b = FeatureCache("sha-b/224/crop", root=root)
    squash = FeatureCache("sha-a/224/squash", root=root)

    model_a.put(img, feature_map(2))

    assert model_b.get(img) is None
    assert squash.get(img) is None
    assert model_a.get(img) is not None
    assert len({model_a.folder, model_b.folder, squash.folder}) == 3
    expected = hashlib.sha256(b"sha-a/224/crop").hexdigest()[:16]
    assert model_a.folder == root / "features" / expected
    # The same namespace in a new process (a new instance) finds the entry.
    again = FeatureCache("sha-a/224/crop", root=root).get(img)
    assert again is not None
    np.testing.assert_array_equal(again, feature_map(2))


def _truncate(entry: Path) -> None:
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) - 7])


def _header_only(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes()[:128])


def _garbage(entry: Path) -> None:
    entry.write_bytes(os.urandom(300))


def _empty(entry: Path) -> None:
    entry.write_bytes(b"")


def _pickled_objects(entry: Path) -> None:
    with open(entry, "wb") as fh:
        np.save(fh, np.array([{"evil": 1}], dtype=object), allow_pickle=True)


def _wrong_dtype(entry: Path) -> None:
    with open(entry, "wb") as fh:
        np.save(fh, np.zeros((8, 4, 4), dtype=np.float64), allow_pickle=False)


def _a_folder(entry: Path) -> None:
    entry.unlink()
    entry.mkdir()


@pytest.mark.parametrize(
    "damage", [_truncate, _header_only, _garbage, _empty, _pickled_objects, _wrong_dtype, _a_folder]
)
def test_damaged_entry_is_a_miss(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    img = image_file(tmp_path / "a.jpg", b"image")
    cache = FeatureCache(NS, root=tmp_path / "cache")
    cache.put(img, feature_map(3))
    entry = cache.entry_path(sha256_file(img))
    damage(entry)

    assert cache.get(img) is None
    assert cache.misses == 1 and cache.hits == 0
    if damage is not _a_folder:
        assert not entry.exists(), "a damaged entry is removed"

    if damage is _a_folder:
        entry.rmdir()
    cache.put(img, feature_map(3))  # and the next put repairs it
    repaired = cache.get(img)
    assert repaired is not None
    np.testing.assert_array_equal(repaired, feature_map(3))


def test_unreadable_image_is_a_miss_and_not_stored(tmp_path: Path) -> None:
    cache = FeatureCache(NS, root=tmp_path / "cache")
    missing = tmp_path / "gone.jpg"

    assert cache.get(missing) is None
    cache.put(missing, feature_map(4))

    assert cache.misses == 1
    assert cache.write_errors == 1
    assert not (tmp_path / "cache").exists()


def test_put_leaves_no_temporary_files(tmp_path: Path) -> None:
    cache = FeatureCache(NS, root=tmp_path / "cache")
    for i in range(5):
        cache.put(image_file(tmp_path / f"{i}.jpg", f"image {i}".encode()), feature_map(i))
    cache.put(tmp_path / "0.jpg", feature_map(99))  # overwrite an existing entry

    assert leftovers(cache.folder) == []
    assert len(list(cache.folder.glob("*.npy"))) == 5
    last = cache.get(tmp_path / "0.jpg")
    assert last is not None
    np.testing.assert_array_equal(last, feature_map(99))


def test_concurrent_writers_of_one_entry(tmp_path: Path) -> None:
    img = image_file(tmp_path / "a.jpg", b"popular image")
    root = tmp_path / "cache"
    candidates = [np.full((16, 8, 8), i, dtype=np.float32) for i in range(24)]
    seen: list[np.ndarray | None] = []
    lock = threading.Lock()

    def write_then_read(i: int) -> None:
        cache = FeatureCache(NS, root=root)  # one instance per worker, as separate processes would
        cache.put(img, candidates[i])
        got = cache.get(img)
        with lock:
            seen.append(got)
        assert cache.write_errors == 0

    shared = FeatureCache(NS, root=root)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write_then_read, range(len(candidates))))
        # The same instance used from many threads at once.
        list(pool.map(lambda i: shared.put(img, candidates[i]), range(len(candidates))))

    assert len(seen) == len(candidates)
    for got in seen:  # every read saw one complete entry, never a partial one
        assert got is not None and got.shape == (16, 8, 8)
        assert np.all(got == got.flat[0]) and 0 <= got.flat[0] < len(candidates)
    final = FeatureCache(NS, root=root).get(img)
    assert final is not None and any(np.array_equal(final, c) for c in candidates)
    assert shared.write_errors == 0
    assert leftovers(shared.folder) == []


def _fail_mkstemp(*args: object, **kwargs: object) -> NoReturn:
    raise PermissionError(errno.EACCES, "Permission denied (read-only cache)")


def _fail_replace(*args: object, **kwargs: object) -> NoReturn:
    raise OSError(errno.ENOSPC, "No space left on device")


def _fail_save(fh: io.BufferedWriter, *args: object, **kwargs: object) -> NoReturn:
    fh.write(b"\x93NUMPY half an array")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    ("target", "fake"),
    [("tempfile.mkstemp", _fail_mkstemp), ("os.replace", _fail_replace), ("np.save", _fail_save)],
)
def test_failed_write_is_counted_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, fake: Callable[..., NoReturn]
) -> None:
    img = image_file(tmp_path / "a.jpg", b"image")
    cache = FeatureCache(NS, root=tmp_path / "cache")
    cache.put(img, feature_map(5))  # a good entry before the disk fails
    module_name, attr = target.split(".")
    owner = files_mod if module_name in ("tempfile", "os") else cache_mod  # atomic writes live in emdcli.io.files
    monkeypatch.setattr(getattr(owner, module_name), attr, fake)

    other = image_file(tmp_path / "b.jpg", b"other image")
    cache.put(other, feature_map(6))
    cache.put(img, feature_map(7))  # a failed overwrite must not damage the entry
    monkeypatch.undo()

    assert cache.write_errors == 2
    assert cache.get(other) is None
    kept = cache.get(img)
    assert kept is not None
    np.testing.assert_array_equal(kept, feature_map(5))
    assert leftovers(cache.folder) == [], "no temporary file is left behind"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder(tmp_path: Path) -> None:
    img = image_file(tmp_path / "a.jpg", b"image")
    cache = FeatureCache(NS, root=tmp_path / "cache")
    cache.put(img, feature_map(7))
    cache.folder.chmod(0o500)
    try:
        other = image_file(tmp_path / "b.jpg", b"other")
        cache.put(other, feature_map(8))
        assert cache.write_errors == 1
        assert cache.get(img) is not None
        assert cache.get(other) is None
    finally:
        cache.folder.chmod(0o700)


def _fill(cache: FeatureCache, tmp_path: Path, names: list[str], shape: tuple[int, ...] = (256,)) -> dict[str, Path]:
    """One entry per name, each with a distinct old mtime: names[0] oldest."""
    entries = {}
    for age, name in enumerate(names):
        img = image_file(tmp_path / "img" / f"{name}.jpg", name.encode())
        cache.put(img, np.zeros(shape, dtype=np.float32))
        entry = cache.entry_path(sha256_file(img))
        stamp = 1_600_000_000 + 100 * age
        os.utime(entry, (stamp, stamp))
        entries[name] = entry
    return entries


def test_prune_removes_least_recently_used_first(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    a = FeatureCache("model-a", root=root)
    b = FeatureCache("model-b", root=root)
    entries = _fill(a, tmp_path, ["a0", "a2", "a4", "a6", "a8"])
    entries |= _fill(b, tmp_path, ["b1", "b3", "b5", "b7", "b9"])
    order = sorted(entries, key=lambda n: int(n[1:]))  # oldest first, across namespaces
    for n in order:
        os.utime(entries[n], (1_600_000_000 + int(n[1:]), 1_600_000_000 + int(n[1:])))
    size = entries["a0"].stat().st_size
    assert all(p.stat().st_size == size for p in entries.values())

    small = FeatureCache("model-a", root=root, max_bytes=10 * size)
    assert small.prune() == 0, "at the limit, nothing to do"

    limit = 8 * size  # 10 entries > limit; down to 90% = 7.2 entries, so 7 stay
    removed = FeatureCache("model-c", root=root, max_bytes=limit).prune()

    assert removed == 3
    kept = [n for n in order if entries[n].exists()]
    assert kept == order[3:], "the three oldest went, whatever their namespace"
    assert sum(entries[n].stat().st_size for n in kept) <= 0.9 * limit


def test_a_hit_protects_an_entry_from_pruning(tmp_path: Path) -> None:
    cache = FeatureCache(NS, root=tmp_path / "cache")
    entries = _fill(cache, tmp_path, ["old", "mid", "new"])
    size = entries["old"].stat().st_size

    assert cache.get(tmp_path / "img" / "old.jpg") is not None  # touches it: now the newest
    cache.max_bytes = int(1.5 * size)  # 3 entries; down to 1.35: the two untouched ones go
    assert cache.prune() == 2

    assert entries["old"].exists()
    assert not entries["mid"].exists() and not entries["new"].exists()


def test_fits_are_kept_apart_from_features_and_pruned_with_them(tmp_path: Path) -> None:
    cache = FeatureCache(NS, root=tmp_path / "cache")
    entries = _fill(cache, tmp_path, ["e0", "e1"])
    digest = "ab" * 32
    assert cache.get_fit(digest) is None
    cache.put_fit(digest, np.ones((2, 3, 256), dtype=np.float64))
    stored = cache.get_fit(digest)
    assert stored is not None and stored.dtype == np.float32 and stored.shape == (2, 3, 256)
    fit = cache.fit_path(digest)
    assert fit == cache.folder / f"{digest}.fit"
    assert sorted(p.name for p in cache.folder.glob("*.npy")) == sorted(p.name for p in entries.values())
    size = entries["e0"].stat().st_size
    os.utime(fit, (1_500_000_000, 1_500_000_000))  # the least recently used of all
    cache.max_bytes = fit.stat().st_size + 2 * size - 1
    assert cache.prune() == 1
    assert not fit.exists() and all(p.exists() for p in entries.values())
    assert cache.get_fit(digest) is None and cache.hits == 0 and cache.misses == 0


def test_prune_tolerates_entries_removed_by_another_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(NS, root=tmp_path / "cache")
    entries = _fill(cache, tmp_path, ["e0", "e1", "e2", "e3"])
    size = entries["e0"].stat().st_size
    real_remove = os.remove

    def racing_remove(path: str | os.PathLike[str]) -> None:
        if Path(path) == entries["e0"]:
            real_remove(path)  # the other process wins the race
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        real_remove(path)

    monkeypatch.setattr(cache_mod.os, "remove", racing_remove)
    cache.max_bytes = 3 * size  # 4 entries; down to 2.7 entries: e0 (gone anyway) and e1
    removed = cache.prune()
    monkeypatch.undo()

    assert removed == 1
    assert [n for n, p in entries.items() if p.exists()] == ["e2", "e3"]


def test_prune_without_a_cache_and_stale_temporary_files(tmp_path: Path) -> None:
    assert FeatureCache(NS, root=tmp_path / "nothing-here", max_bytes=0).prune() == 0

    cache = FeatureCache(NS, root=tmp_path / "cache")
    entries = _fill(cache, tmp_path, ["x"])
    stale = cache.folder / ".deadbeef.abc.tmp"
    fresh = cache.folder / ".deadbeef.def.tmp"
    stale.write_bytes(b"half a write")
    fresh.write_bytes(b"a write in progress")
    os.utime(stale, (1_600_000_000, 1_600_000_000))

    assert cache.prune() == 0
    assert not stale.exists(), "a writer killed long ago left it"
    assert fresh.exists(), "another process may still be writing it"
    assert entries["x"].exists()


def test_file_digest_reads_large_files_in_chunks(tmp_path: Path) -> None:
    payload = os.urandom(1 << 16) * 40 + b"tail"  # 2.5 MiB and a bit: three chunks
    path = image_file(tmp_path / "big.bin", payload)

    assert sha256_file(path) == hashlib.sha256(payload).hexdigest()
    assert sha256_file(image_file(tmp_path / "empty", b"")) == hashlib.sha256(b"").hexdigest()


def test_get_then_put_hashes_the_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = cache_mod.sha256_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(cache_mod, "sha256_file", counting)
    img = image_file(tmp_path / "a.jpg", b"image")
    cache = FeatureCache(NS, root=tmp_path / "cache")

    assert cache.get(img) is None
    cache.put(img, feature_map(9))
    assert cache.get(img) is not None
    assert calls == [img]

    image_file(img, b"edited, and longer")  # a new size: hashed again
    assert cache.get(img) is None
    assert calls == [img, img]


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EMDCLI_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "emdcli"

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "emdcli"

    monkeypatch.setenv("EMDCLI_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    assert FeatureCache(NS).root == tmp_path / "mine"

    monkeypatch.setenv("EMDCLI_CACHE_DIR", "")  # empty counts as unset
    assert default_cache_dir() == tmp_path / "xdg" / "emdcli"


def test_no_pickle_in_the_module() -> None:
    source = Path(cache_mod.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"} & imported

    np_calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "np"
        and node.func.attr in {"load", "save"}
    ]
    assert {c.func.attr for c in np_calls if isinstance(c.func, ast.Attribute)} == {"load", "save"}
    for call in np_calls:
        flag = {kw.arg: kw.value for kw in call.keywords}.get("allow_pickle")
        assert isinstance(flag, ast.Constant) and flag.value is False, ast.unparse(call)
    assert "pickle" not in source.replace("allow_pickle=False", "")


def test_import_is_light() -> None:
    code = (
        "import sys, emdcli.features.cache; "
        "print(sorted(m for m in ('onnxruntime', 'ot', 'PIL', 'torch', 'typer', 'rich', 'yaml', 'scipy') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_for_model_keys_by_model_and_preprocessing(tiny_model: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from emdcli.model.manifest import load_manifest

    manifest = load_manifest(tiny_model)
    cache = FeatureCache.for_model(manifest, root=tmp_path, max_bytes=123)
    assert cache.namespace == f"{manifest.sha256}/{manifest.preprocess.key()}"
    assert (cache.root, cache.max_bytes) == (tmp_path, 123)
    other = FeatureCache.for_model(replace(manifest, input_size=manifest.input_size + 8), root=tmp_path)
    assert other.folder != cache.folder
