"""Ctrl-C and SIGTERM, turned into a KeyboardInterrupt at a safe point.

Python's default raises KeyboardInterrupt wherever the main thread is, which can be the
middle of an SQLite commit: the half-done transaction then holds the database lock and
the run cannot even be closed ("database is locked"). Here the signal only sets a flag;
`check()` raises between training steps and between trials. A second signal raises at once
(a way out of a stuck process), except inside `shielded()`, where the runs and trials of
an interrupted sweep are being closed: there it raises when the closing is done.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

_received = 0  # signals received so far
_shield = 0  # depth of shielded() blocks
_deferred = False  # a second signal arrived inside a shielded() block


def _handler(signum: int, frame: object) -> None:
    global _received, _deferred  # process-wide by nature, like the signal itself
    _received += 1
    if _received > 1 and _shield:
        _deferred = True
    elif _received > 1:
        raise KeyboardInterrupt


def install() -> None:
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def requested() -> bool:
    return _received > 0


def received() -> int:
    """How many Ctrl-C/SIGTERM this process got: a parent passes each on to its workers."""
    return _received


def check() -> None:
    if _received:
        raise KeyboardInterrupt


@contextmanager
def shielded() -> Iterator[None]:
    """Closing code that a second signal must not cut in half."""
    global _shield, _deferred
    _shield += 1
    try:
        yield
    finally:
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
