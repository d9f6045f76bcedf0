"""Ctrl-C, SIGTERM and a hung-up terminal, turned into a KeyboardInterrupt at a safe point.

Python's default raises KeyboardInterrupt wherever the main thread is, which can be the
middle of an SQLite commit: the half-done transaction then holds the database lock and
the run cannot even be closed ("database is locked"). Here the signal only sets a flag;
`check()` raises between training steps and between trials. A second signal raises at once
(a way out of a stuck process), except inside `shielded()`: where the runs and trials of
an interrupted sweep are being closed, and where MindSpore runs a graph (a KeyboardInterrupt
raised inside its compiler came out as a 30-line MindSpore error and a run closed without
its reason, reproduced): there it raises when the block is done.

A process that is still stopping ANNOUNCE_AFTER_S after the first signal says what it
waits for (`waiting_for`), once: Ctrl-C is never met with seconds of silence.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
ANNOUNCE_AFTER_S = 1.0

_received = 0  # signals received so far
_shield = 0  # depth of shielded() blocks
_deferred = False  # a second signal arrived inside a shielded() block
_announce: Callable[[str], None] | None = None  # the CLI's way to say a line at once
_waiting = "the work in progress to stop at a safe point"


def _handler(signum: int, frame: object) -> None:
    global _received, _deferred  # process-wide by nature, like the signal itself
    _received += 1
    if _received == 1 and _announce is not None:
        timer = threading.Timer(ANNOUNCE_AFTER_S, _say_waiting)
        timer.daemon = True
        timer.start()
    if _received > 1 and _shield:
        _deferred = True
    elif _received > 1:
        raise KeyboardInterrupt


def _say_waiting() -> None:
    if _announce is not None and _received == 1:  # a second signal asked for no more words
        _announce(f"stopping: waiting for {_waiting} (press Ctrl-C again to stop sooner)")


def install(announce: Callable[[str], None] | None = None) -> None:
    """Handle the signals here; `announce` says a line from any thread (the CLI's
    terminal), None for a process whose parent speaks for it."""
    global _announce
    _announce = announce
    for sig in SIGNALS:
        signal.signal(sig, _handler)


def waiting_for(what: str) -> None:
    """What this process waits for once interrupted, in words ('2 workers to close ...')."""
    global _waiting
    _waiting = what


def requested() -> bool:
    return _received > 0


def received() -> int:
    """How many signals this process got: a parent passes each on to its workers."""
    return _received


def check() -> None:
    if _received:
        raise KeyboardInterrupt


@contextmanager
def blocked() -> Iterator[None]:
    """The signals held back (not lost) for the block: a fork made inside starts with them
    held, so a signal sent to the child at once waits for it to be ready (`after_fork`)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def after_fork(unblock: bool = True) -> None:
    """In a forked worker: its own count (the parent's Ctrl-C is the parent's: it passes
    one SIGTERM on, which must be the worker's first, not its second), no announcements
    (its parent speaks for it), and the signals held back by `blocked` let through."""
    global _received, _shield, _deferred, _announce
    _received, _shield, _deferred, _announce = 0, 0, False, None
    if unblock:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


class shielded:
    """Code that a second signal must not cut in half (closing runs, MindSpore's graph
    calls): the KeyboardInterrupt comes when the outermost such block is done. A class,
    not a generator: it wraps every compiled call of a training (~1 us each)."""

    def __enter__(self) -> None:
        global _shield
        _shield += 1

    def __exit__(self, *exc: object) -> None:
        global _shield, _deferred
        _shield -= 1
        if not _shield and _deferred:
            _deferred = False
            raise KeyboardInterrupt


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies, however it dies (a
    closed terminal's SIGHUP, kill -9): no worker or server outlives its command. Called in
    the child, after fork (and kept across exec). Not Linux (no prctl): nothing is asked."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
