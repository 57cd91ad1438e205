"""Sorting files into folders by class (``classify --sort-into DIR``): where each one goes, names
that never overwrite, one copy, link or move done whole or not at all, and one done earlier
recognised as done.

A file of class ``red`` goes to ``DIR/red/`` under its own name, or ``NAME-2.SUFFIX``,
``NAME-3.SUFFIX``, ... when that name is taken by another file; a file of too low a confidence
goes to ``DIR/_review/``. What a name already holds decides what is left to do:

- the same content (or, for ``link``, the same file): done earlier, nothing to do (``present``);
  for ``move`` with the source still there (a move across file systems interrupted after its
  rename), the source is removed to finish it;
- another file: the next name is tried (nothing is ever overwritten).

A copy is written to a hidden temporary name in the target folder, flushed to disk and then
given its name; a move within a file system is one rename (a hard link then the unlink of the
source, where hard links work), across file systems a copy as above, then the source's unlink.
So an interrupted run leaves each file either where it was or where it belongs (or, for a
moment, both, which the next run finishes), and running it again does the rest. Support images
(``protected``) are never touched. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from ..errors import UsageError
from .files import CHUNK_BYTES, TMP_SUFFIX, display_path

if TYPE_CHECKING:
    from .folders import LabelledFolder

#: How a file is put into its class folder: copied, linked (a hard link, or a symbolic link
#: where a hard link cannot be made, as across file systems) or moved.
SortAction = Literal["copy", "link", "move"]
SORT_ACTIONS: tuple[str, ...] = get_args(SortAction)
#: The folder below DIR for files whose confidence is below ``min_confidence``.
REVIEW_FOLDER = "_review"
#: What became of a file: done now (copied, hardlinked, symlinked, moved), found done by an earlier
#: run (present), left in place as a support image (kept), or not sorted (failed); a dry run says
#: ``would copy``, ``would hardlink``, ``would symlink`` or ``would move`` instead.
DONE = ("copied", "hardlinked", "symlinked", "moved")
#: Errors that stop the run (errors.os_error says what they mean), not just one file's sorting.
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
#: Why a hard link may not be made where a file can still be linked to symbolically or renamed.
NO_HARD_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


@dataclass(frozen=True)
class Plan:
    """What sorting ``source`` into ``target`` takes.

    state: ``new`` (nothing there yet: do it), ``present`` (done earlier), ``finish`` (a move whose
    copy is in place but whose source is still there: remove the source), ``kept`` (a support
    image: left alone), ``gone`` (the source no longer exists and no earlier result was found).
    link: for ``link``, ``hard`` or ``symbolic`` as a hard link can be made there or not.
    """

    source: Path
    target: Path | None
    state: str
    link: str | None = None


@dataclass(frozen=True)
class Placement:
    """Where one file went (or, in a dry run, would go): ``action`` as in :data:`DONE`, ``present``,
    ``kept``, ``failed`` or ``would ...``; ``target`` None when it was not sorted (then ``reason``)."""

    source: Path
    action: str
    target: Path | None = None
    reason: str | None = None

    def record(self) -> dict[str, str | None]:
        """The fields of an output row: ``sorted_to`` (the path, or None) and ``sort_action``."""
        return {"sorted_to": None if self.target is None else display_path(self.target), "sort_action": self.action}


def folder_name_problem(name: str) -> str | None:
    """Why ``name`` (a class or the unknown label) cannot be a folder name below DIR, or None."""
    if name in ("", ".", ".."):
        return f"{name!r} is not a folder name"
    if "/" in name or os.sep in name or (os.altsep and os.altsep in name) or "\0" in name:
        return f"{name!r} holds a path separator"
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_destination(root: Path, support: Path, labels: Iterable[str], queries: Iterable[str] = (),
                      *, dry_run: bool = False) -> None:  # fmt: skip
    """UsageError (exit 2) before any work when ``root`` cannot take the sorted files: it (or one
    of its class folders) is inside the support folder, it is a file, its nearest existing folder
    cannot be written (in a dry run: by permissions), a label is no folder name, or a query
    argument lies inside one of its class folders (it would be sorted into itself)."""
    labels = list(labels)
    for label in labels:
        problem = folder_name_problem(label)
        if problem:
            raise UsageError(f"cannot sort into a folder named after {problem}",
                             hint="choose another `unknown_label`")  # fmt: skip
    where = root.resolve()
    held = support.resolve()
    if any(_inside((where / label).resolve(), held) for label in ("", *labels)):
        raise UsageError(f"`sort_into` {display_path(root)} is inside the support folder {display_path(support)}",
                         hint="sort into a folder outside SUPPORT")  # fmt: skip
    folders = [(where / label).resolve() for label in labels]
    for query in queries:
        if query != "-" and any(_inside(Path(query).resolve(), f) for f in folders):
            raise UsageError(f"query {query} is inside a class folder of `sort_into` {display_path(root)}",
                             hint="sort into another folder, or give the queries outside it")  # fmt: skip
    existing = next(p for p in (where, *where.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise UsageError(f"`sort_into` is not a folder: {display_path(existing)}", hint="give a folder")
    try:
        if dry_run:
            if not os.access(existing, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        else:  # the one sure test: make a file there (read-only or special file systems)
            with tempfile.TemporaryFile(dir=existing, prefix=".emdcli-check-"):
                pass
    except OSError as exc:
        raise UsageError(f"cannot write into `sort_into` {display_path(existing)} ({exc.strerror or exc})",
                         hint="sort into a folder you can write to") from None  # fmt: skip


def candidates(folder: Path, name: str) -> Iterator[Path]:
    """``folder/name``, then ``folder/STEM-2.SUFFIX``, ``folder/STEM-3.SUFFIX``, ..."""
    stem, suffix = os.path.splitext(name)
    yield folder / name
    for n in itertools.count(2):
        yield folder / f"{stem}-{n}{suffix}"


def same_content(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (sizes first, then 1 MiB at a time)."""
    if os.stat(a).st_size != os.stat(b).st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            chunk = fa.read(CHUNK_BYTES)
            if chunk != fb.read(CHUNK_BYTES):
                return False
            if not chunk:
                return True


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _give_name(src: Path, target: Path) -> None:
    """Rename ``src`` to ``target`` without ever replacing a file there (FileExistsError): a hard
    link then the unlink of ``src``, or, where hard links cannot be made, a rename to a free name.
    OSError EXDEV when they lie on different file systems."""
    try:
        os.link(src, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV or exc.errno not in NO_HARD_LINK:
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        os.rename(src, target)
        return
    os.unlink(src)


def copy_whole(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` (not there yet) whole or not at all: into a hidden temporary
    file in the target folder, flushed to disk, its mode and times copied, then named ``target``."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, CHUNK_BYTES)
            out.flush()
            os.fsync(out.fileno())
        shutil.copystat(source, tmp)
        _give_name(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def transfer(source: Path, target: Path, how: SortAction) -> str:
    """One copy, link or move of ``source`` to the free name ``target``, done whole (see the module
    docstring); the action done (:data:`DONE`). FileExistsError when ``target`` was taken meanwhile."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if how == "copy":
        copy_whole(source, target)
        return "copied"
    if how == "link":
        try:
            os.link(source, target)
            return "hardlinked"
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in NO_HARD_LINK:
                raise
        os.symlink(os.path.abspath(source), target)
        return "symlinked"
    try:
        _give_name(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_whole(source, target)
        _fsync_folder(target.parent)  # the copy's name is on disk before the source goes
        os.unlink(source)
    return "moved"


def _device(path: Path) -> int:
    existing = next(p for p in (path, *path.parents) if p.exists())
    return os.stat(existing).st_dev


@dataclass
class Sorter:
    """Sorts files into ``root/<label>/`` (``root/_review/`` below ``min_confidence``) by ``how``.

    protected: resolved paths of files never to touch (the support images). dry_run: plan only,
    changing nothing. counts: the placements so far, by action.
    """

    root: Path
    how: SortAction = "copy"
    min_confidence: float | None = None
    protected: frozenset[Path] = frozenset()
    dry_run: bool = False
    labels: tuple[str, ...] = ()
    counts: Counter[str] = field(default_factory=Counter)
    left_out: int = 0
    _claimed: set[Path] = field(default_factory=set, repr=False)  # names a dry run has handed out

    @classmethod
    def for_support(cls, root: Path, support: LabelledFolder, how: SortAction = "copy", *,
                    min_confidence: float | None = None, dry_run: bool = False, unknown_label: str | None = None,
                    queries: Iterable[str] = ()) -> Sorter:  # fmt: skip
        """The Sorter of ``classify --sort-into root``: a folder per class of ``support`` (and
        ``unknown_label`` with rejection on), its support images protected; ``root`` checked by
        :func:`check_destination` first (UsageError, before any work)."""
        labels = (*support.names, *(() if unknown_label is None else (unknown_label,)))
        check_destination(root, support.root, labels, queries, dry_run=dry_run)
        protected = frozenset(p.resolve() for c in support.classes for p in c.files)
        return cls(root, how, min_confidence, protected, dry_run, labels)

    def folder(self, label: str, confidence: float | None, rejected: bool = False) -> Path:
        """The folder a file of ``label`` goes to: ``root/_review`` when its confidence is below
        ``min_confidence`` (not for a rejected one: it goes to its label, the unknown one)."""
        low = self.min_confidence is not None and confidence is not None and confidence < self.min_confidence
        return self.root / (REVIEW_FOLDER if low and not rejected else label)

    def holds(self, path: Path) -> bool:
        """Whether ``path`` lies inside one of the class folders (of ``labels``) or the review folder."""
        resolved = path.resolve()
        return any(_inside(resolved, (self.root / name).resolve()) for name in (*self.labels, REVIEW_FOLDER))

    def outside(self, paths: Iterable[Path]) -> Iterator[Path]:
        """``paths`` less those already inside one of the class folders (of ``labels``) or the review
        folder, lazily: a file sorted by an earlier run is not a query again. ``left_out`` counts them."""
        for path in paths:
            if self.holds(path):
                self.left_out += 1
                continue
            yield path

    def _matches(self, source: Path, there: Path) -> bool:
        """Whether ``there`` (which exists) already is what sorting ``source`` makes."""
        if there.is_symlink():
            return self.how == "link" and there.exists() and os.path.samefile(source, there)
        return there.is_file() and (os.path.samefile(source, there) or same_content(source, there))

    def plan(self, source: Path, folder: Path, earlier: Path | None = None) -> Plan:
        """What sorting ``source`` into ``folder`` takes: the first of its names (:func:`candidates`)
        that is free or already holds it. earlier: where an earlier run's row says it went (used when
        the source is gone: moved by that run)."""
        if source.resolve() in self.protected:
            return Plan(source, None, "kept")
        if not os.path.lexists(source):
            if earlier is not None and os.path.lexists(earlier):
                return Plan(source, earlier, "present")
            return Plan(source, None, "gone")
        real = os.path.realpath(source)
        for there in candidates(folder, source.name):
            if there in self._claimed:
                continue
            if not os.path.lexists(there):
                link = None
                if self.how == "link":
                    link = "hard" if _device(source) == _device(folder) else "symbolic"
                return Plan(source, there, "new", link)
            if os.path.realpath(there) == real:
                return Plan(source, there, "present")  # it is its own target
            if self._matches(source, there):
                return Plan(source, there, "finish" if self.how == "move" else "present")
        raise AssertionError("unreachable")  # candidates never ends

    def carry_out(self, plan: Plan) -> Placement:
        """Do ``plan`` (in a dry run, say what it would do). OSError as the file system raises it;
        FileExistsError when its name was taken meanwhile."""
        if plan.state == "kept":
            return Placement(plan.source, "kept", reason="a support image: left in place")
        if plan.state == "gone":
            return Placement(plan.source, "failed", reason="it no longer exists")
        assert plan.target is not None
        if plan.state == "present":
            return Placement(plan.source, "present", plan.target)
        if self.dry_run:
            self._claimed.add(plan.target)
            verb = {"hard": "hardlink", "symbolic": "symlink", None: self.how}[plan.link]
            return Placement(plan.source, f"would {verb}", plan.target)
        if plan.state == "finish":
            os.unlink(plan.source)
            return Placement(plan.source, "moved", plan.target)
        return Placement(plan.source, transfer(plan.source, plan.target, self.how), plan.target)

    def place(self, source: Path, label: str, confidence: float | None = None, *, rejected: bool = False,
              earlier: Path | None = None) -> Placement:  # fmt: skip
        """Sort one file of ``label``: plan, then carry out (once more if its name was taken
        meanwhile). An OSError on this file is a ``failed`` placement with its reason; a full disk,
        a quota or a read-only file system is raised (the run cannot go on)."""
        folder = self.folder(label, confidence, rejected)
        try:
            for _ in range(3):
                try:
                    placed = self.carry_out(self.plan(source, folder, earlier))
                    break
                except FileExistsError:
                    continue
            else:
                placed = Placement(source, "failed", reason=f"no free name in {display_path(folder)}")
        except OSError as exc:
            if exc.errno in FATAL_ERRNOS:
                raise
            placed = Placement(source, "failed", reason=exc.strerror or str(exc))
        self.counts[placed.action] += 1
        return placed
