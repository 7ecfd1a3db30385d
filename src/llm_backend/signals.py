"""Signal handling for `start`: SIGTERM, SIGHUP and SIGINT become an exception, so a start
can undo what it did; a critical section can hold them back until it is done."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Interrupted(BaseException):
    """SIGTERM, SIGHUP or SIGINT arrived while `start` was running; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# While a list, signals that `start` turns into exceptions are recorded here instead.
_pending_signals: list[int] | None = None


@contextlib.contextmanager
def signals_deferred(*, raise_after: bool = True) -> Iterator[None]:
    """Hold interrupts back for a critical section; one that came is raised after it
    (`raise_after`), or dropped (for cleanup that already does what the signal asks).

    Not done with a blocked signal mask: children would inherit it and ignore SIGTERM.
    """
    global _pending_signals
    outer = _pending_signals
    _pending_signals = [] if outer is None else outer
    try:
        yield
    finally:
        pending, _pending_signals = _pending_signals, outer
    if pending and outer is None and raise_after:
        raise Interrupted(pending[0])


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM, SIGHUP and SIGINT into `Interrupted` inside the block (main thread only;
    elsewhere the block runs with the handlers as they were)."""

    def raise_interrupted(signum: int, frame: FrameType | None) -> None:
        if _pending_signals is not None:
            _pending_signals.append(signum)
            return
        raise Interrupted(signum)

    previous = {}
    for signum in HANDLED_SIGNALS:
        with contextlib.suppress(ValueError):  # not the main thread
            previous[signum] = signal.signal(signum, raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
