"""The terminal as a reader that may leave: a closed pipe or a hung-up terminal never
stops the work.

`python runner.py sweep ... | head -1` closes the pipe after one line, and every later
write to it raises BrokenPipeError (EPIPE); a terminal that hung up raises EIO. Unguarded,
the first such write lands wherever the program happens to print: inside a trial, where
BrokenPipeError (a ConnectionError) was taken for a lost connection to the store and the
sweep stopped after three trials (reproduced with one worker). Here stdout and stderr are
wrapped once per process: a write that finds its reader gone points the stream's file at
/dev/null and returns as if written, so the rest of the output goes nowhere and the work
goes on. Processes forked later inherit the wrapped streams.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import Any

# The reader is gone: a closed pipe (EPIPE), a terminal that hung up (EIO).
GONE = {errno.EPIPE, errno.EIO}


class Guarded:
    """A text stream whose writes never fail because its reader left."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            if exc.errno not in GONE:
                raise
            self._lose()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            if exc.errno not in GONE:
                raise
            self._lose()

    def _lose(self) -> None:
        """The reader left: everything from now on, and what is buffered, goes nowhere."""
        self.gone = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()  # the buffer now drains into /dev/null

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard() -> None:
    """Wrap this process's stdout and stderr (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, Guarded):
            setattr(sys, name, Guarded(stream))


def say_now(text: str) -> None:
    """One line on stderr from anywhere, a signal handler included (one os.write, no
    buffer or lock a half-done write could hold); a reader that left is no error."""
    with contextlib.suppress(OSError):
        os.write(2, (text.rstrip("\n") + "\n").encode("utf-8", "replace"))
