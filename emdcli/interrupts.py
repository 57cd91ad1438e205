"""SIGINT and SIGTERM, handled in one place.

    with handled({signal.SIGTERM: raise_terminated}):   # what the CLI does around every command
        ...
    with kept_handlers(signal.SIGTERM):                 # a library call that replaces a handler
        ray.init(...)                                   # (ray.init does) gets the old one back
    with deferred():                                    # a row written whole: SIGINT/SIGTERM wait
        stream.write(row)                               # for the block's end, then act as before

Handlers can only be installed from the main thread; elsewhere both are no-ops.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .errors import Terminated

Handler = Callable[[int, Any], None]


def raise_terminated(signum: int, frame: Any) -> None:
    """A handler that raises :class:`Terminated`, so SIGTERM stops a run as cleanly as Ctrl-C."""
    raise Terminated()


def stop_error(signum: int) -> BaseException:
    """The exception a run stopped by ``signum`` ends with: KeyboardInterrupt (SIGINT) or Terminated."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


@contextlib.contextmanager
def kept_handlers(*signums: int) -> Iterator[None]:
    """Put back the handlers of ``signums`` in place before the block, whatever it installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            if handler is not None:
                signal.signal(s, handler)


@contextlib.contextmanager
def handled(handlers: Mapping[int, Handler]) -> Iterator[None]:
    """Install ``handlers`` (signal number -> handler) for the block; the earlier ones come back after."""
    with kept_handlers(*handlers):
        if threading.current_thread() is threading.main_thread():
            for s, handler in handlers.items():
                signal.signal(s, handler)
        yield


@contextlib.contextmanager
def deferred(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold ``signums`` until the block ends, then act on the first one caught as the handler in place
    before would have (raise, or the default action): what the block writes is never cut in two."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    try:
        with kept_handlers(*signums):
            for s in signums:
                signal.signal(s, lambda signum, frame: caught.append(signum))
            yield
    finally:
        if caught:  # the handler in place before is back
            handler = signal.getsignal(caught[0])
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])
