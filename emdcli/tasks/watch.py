"""Watching a folder: each image classified once it has arrived whole.

    with Inbox(Path("inbox")) as inbox:              # watchdog's native events, else polling
        for pred in watch_predictions(clf, support, inbox):
            print(pred.path, pred.predicted)            # runs until the caller stops it

File events come from `watchdog <https://github.com/gorakhargosh/watchdog>`_: inotify on Linux
(FSEvents, kqueue, ReadDirectoryChangesW elsewhere), or its polling observer (``poll=SECONDS``, and
when the native one cannot start, as on some network file systems). An image is *ready*:

- when it is moved (renamed) into the folder: a rename is whole;
- on Linux, when the process writing it closes it; a file being written is never read;
- elsewhere, and for a file that appears without being written (a hard link), once its size and
  modification time have stayed the same for :data:`~emdcli.defaults.WATCH_SETTLE_SECONDS`.

Images that are ready together are matched as one set (the transductive step needs a set; one
arrival alone is matched on its own). The images already in the folder at the start are one set, in
the order ``classify`` reads a folder, so they get the rows ``classify INBOX`` gives.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from .. import defaults
from ..io.images import is_image_name, iter_image_files
from .classify import Classifier, Prediction, SupportSet

__all__ = ["Inbox", "StatKey", "stat_key", "watch_predictions"]

#: What tells one version of a file from another: (size in bytes, modification time in ns).
StatKey = tuple[int, int]


def stat_key(path: Path) -> StatKey | None:
    """``path``'s (size, mtime_ns), or None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class _Pending:
    """A file seen but not yet ready: its last (size, mtime), since when it is so (monotonic s), and
    whether a write was seen and no close yet (only known with close events)."""

    key: StatKey | None
    since: float
    writing: bool = False
    not_before: float = 0.0


@dataclass
class Inbox:
    """The image files arriving in ``folder`` (and its subfolders), each handed out once it is whole.

    poll: check every this many seconds instead of native file events (None: native, falling back to
    polling every :data:`~emdcli.defaults.WATCH_POLL_SECONDS` when it cannot start). settle: how long
    a file must stay unchanged to count as whole where no close event says so. skip: files never to
    hand out (the folders sorted into, say). Use as a context manager: it watches from ``__enter__``.
    """

    folder: Path
    poll: float | None = None
    settle: float = defaults.WATCH_SETTLE_SECONDS
    skip: Callable[[Path], bool] = field(default=lambda path: False, repr=False)
    #: How events are watched for, in words ("inotify", "polling every 0.5 s"), once started.
    how: str = field(default="", init=False)
    #: Whether a close event marks a file whole (Linux's native observer).
    close_events: bool = field(default=False, init=False)
    _lock: threading.Condition = field(default_factory=threading.Condition, init=False, repr=False)
    _pending: dict[Path, _Pending] = field(default_factory=dict, init=False, repr=False)
    _ready: dict[Path, None] = field(default_factory=dict, init=False, repr=False)
    _observer: Any = field(default=None, init=False, repr=False)
    _rescan: bool = field(default=False, init=False, repr=False)

    # watching ---------------------------------------------------------------------------------

    def __enter__(self) -> Inbox:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Start watching (native events, else polling). OSError when the folder cannot be watched."""
        from watchdog.observers.polling import PollingObserver

        handler = _Handler(self)
        why = ""
        if self.poll is None:
            try:
                observer, self.close_events = _native_observer()
                observer.schedule(handler, str(self.folder), recursive=True, event_filter=_native_events())
                observer.start()
            except OSError as exc:  # the inotify watch limit, a file system without events ...
                why = exc.strerror or str(exc)
                self.poll = defaults.WATCH_POLL_SECONDS
            else:
                self._observer = observer
                self.how = type(observer).__name__.removesuffix("Observer").lower() or "native events"
                return
        observer = PollingObserver(timeout=self.poll)
        observer.schedule(handler, str(self.folder), recursive=True)
        observer.start()
        self._observer, self.close_events = observer, False
        self.how = f"polling every {self.poll:g} s" + (f" (native events failed: {why})" if why else "")

    def stop(self) -> None:
        """Stop watching (waits for the observer's thread)."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    # what the observer's thread reports ---------------------------------------------------------

    def _wanted(self, path: Path) -> bool:
        if not is_image_name(path) or any(part.startswith(".") for part in path.relative_to(self.folder).parts):
            return False
        return not self.skip(path)

    def _inside(self, path: Path) -> bool:
        return self.folder == path or self.folder in path.parents

    def seen(self, path: Path, *, wrote: bool = False) -> None:
        """``path`` appeared or changed: pending until whole (``wrote``: a write was seen)."""
        if not self._inside(path) or not self._wanted(path):
            return
        with self._lock:
            self._ready.pop(path, None)
            entry = self._pending.get(path)
            if entry is None:
                self._pending[path] = _Pending(stat_key(path), time.monotonic(), wrote and self.close_events)
            else:
                entry.writing = entry.writing or (wrote and self.close_events)
            self._lock.notify_all()

    def arrived(self, path: Path) -> None:
        """``path`` is whole (closed after writing, or moved in): ready now."""
        if not self._inside(path) or not self._wanted(path):
            return
        with self._lock:
            self._pending.pop(path, None)
            self._ready[path] = None
            self._lock.notify_all()

    @property
    def waiting(self) -> int:
        """How many files are seen but not yet handed out (being written, or settling)."""
        with self._lock:
            return len(self._pending) + len(self._ready)

    def gone(self, path: Path) -> None:
        with self._lock:
            self._pending.pop(path, None)
            self._ready.pop(path, None)

    def lost_events(self) -> None:
        """The observer dropped events (a full inotify queue): look at every file again."""
        with self._lock:
            self._rescan = True
            self._lock.notify_all()

    def retry(self, path: Path, after: float = 0.0) -> None:
        """Hand ``path`` out again once it is whole, and not before ``after`` seconds from now (it could
        not be read and may still be being written)."""
        with self._lock:
            now = time.monotonic()
            self._pending[path] = _Pending(stat_key(path), now, False, now + after)

    # what the caller takes ----------------------------------------------------------------------

    def backlog(self) -> list[Path]:
        """The images in the folder now, in ``classify``'s order, less those changed within ``settle``
        seconds (they are pending and handed out by :meth:`wait` once whole)."""
        found, now_ns = [], time.time_ns()
        for path in iter_image_files(self.folder):
            if self.skip(path):
                continue
            key = stat_key(path)
            if key is None:
                continue
            if now_ns - key[1] < self.settle * 1e9:
                with self._lock:
                    self._pending.setdefault(path, _Pending(key, time.monotonic()))
                continue
            found.append(path)
        return found

    def wait(self, timeout: float) -> list[Path]:
        """The files that became whole, in the order they did, waiting up to ``timeout`` seconds for
        one; [] when none did. FileNotFoundError when the folder is gone."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if not self.folder.is_dir():
                    raise FileNotFoundError(errno.ENOENT, "the folder is gone", str(self.folder))
                if self._rescan:
                    self._rescan = False
                    for path in iter_image_files(self.folder):
                        if self._wanted(path) and path not in self._ready:
                            self._pending.setdefault(path, _Pending(stat_key(path), time.monotonic()))
                self._promote()
                if self._ready:
                    out = list(self._ready)
                    self._ready.clear()
                    return out
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                step = min(left, self.settle / 2) if self._pending else left
                self._lock.wait(step)

    def _promote(self) -> None:
        """Move the pending files that stayed unchanged for ``settle`` seconds to ready (under the lock)."""
        now = time.monotonic()
        for path, entry in list(self._pending.items()):
            key = stat_key(path)
            if key is None:
                del self._pending[path]
            elif key != entry.key:
                entry.key, entry.since = key, now
            elif not entry.writing and key[0] > 0 and now - entry.since >= self.settle and now >= entry.not_before:
                del self._pending[path]
                self._ready[path] = None


def _native_observer() -> tuple[Any, bool]:
    """The platform's native observer, and whether it reports a file closed after writing (inotify,
    with full events: a file moved in from outside is a move, not a creation)."""
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:  # not Linux
        from watchdog.observers import Observer

        return Observer(), False
    return InotifyObserver(generate_full_events=True), True


def _native_events() -> list[Any]:
    """The events :class:`_Handler` acts on (the others, such as our own reads' opens, are not asked for)."""
    from watchdog import events

    return [events.FileCreatedEvent, events.FileModifiedEvent, events.FileMovedEvent, events.FileDeletedEvent,
            events.FileClosedEvent, events.DirMovedEvent, events.EventsLostEvent]  # fmt: skip


class _Handler(FileSystemEventHandler):
    """watchdog's event handler interface, passing each event on to an :class:`Inbox`."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def dispatch(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind == "lost":  # EventsLostEvent
            self.inbox.lost_events()
            return
        if event.is_directory:
            return
        src = Path(os.fsdecode(event.src_path)) if event.src_path else None
        if kind == "moved":
            if src is not None:
                self.inbox.gone(src)
            if event.dest_path:
                self.inbox.arrived(Path(os.fsdecode(event.dest_path)))
        elif src is None:
            return
        elif kind == "closed":  # closed after writing
            self.inbox.arrived(src)
        elif kind in ("created", "modified"):
            self.inbox.seen(src, wrote=kind == "modified")
        elif kind == "deleted":
            self.inbox.gone(src)


def watch_predictions(
    clf: Classifier,
    support: SupportSet,
    inbox: Inbox,
    *,
    done: Iterable[Path] = (),
    once: bool = False,
    wait_seconds: float = 0.25,
) -> Iterator[Prediction]:
    """One Prediction per image of ``inbox``: those there now (matched as one set), then each as it
    arrives (those ready together matched as one set), until the caller stops or, with ``once``, when
    no file is left waiting to become whole.

    done: paths classified by an earlier run, not classified again. A file that changes after its
    prediction is classified again. An unreadable one that changed while it was read, or within
    :data:`~emdcli.defaults.WATCH_UNREADABLE_GRACE` seconds before, is tried again once whole (a writer
    may have paused without closing it), and yielded as an error only when it fails again after that.
    ``wait_seconds``: how long each wait for new files lasts before it is renewed.
    """
    earlier = set(done)
    classified: dict[Path, StatKey | None] = {}
    batch = inbox.backlog()
    while True:
        batch = [p for p in batch if p not in earlier and (p not in classified or classified[p] != stat_key(p))]
        if batch:
            keys = {p: stat_key(p) for p in batch}
            for pred in clf.predict(support, batch):
                now = stat_key(pred.path)
                if not pred.ok and now is not None:
                    age = time.time() - now[1] / 1e9
                    if now != keys[pred.path] or age < defaults.WATCH_UNREADABLE_GRACE:  # still being written?
                        inbox.retry(pred.path, after=defaults.WATCH_UNREADABLE_GRACE - age)
                        continue
                classified[pred.path] = keys[pred.path]
                yield pred
        if once and not inbox.waiting:
            return
        batch = inbox.wait(wait_seconds)
