"""Ctrl-C and SIGTERM, turned into a KeyboardInterrupt at a safe point.

Python's default raises KeyboardInterrupt wherever the main thread is, which can be the
middle of an SQLite commit: the half-done transaction then holds the database lock and
the run cannot even be closed ("database is locked"). Here the signal only sets a flag;
`check()` raises between training steps and between trials. A second signal raises at once.
"""

from __future__ import annotations

import signal

_requested = False


def _handler(signum: int, frame: object) -> None:
    global _requested  # the flag is process-wide by nature, like the signal itself
    if _requested:
        raise KeyboardInterrupt
    _requested = True


def install() -> None:
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def requested() -> bool:
    return _requested


def check() -> None:
    if _requested:
        raise KeyboardInterrupt
