"""Named fault points for the fault-injection tests; inert unless RUNNER_FAULT is set.

`RUNNER_FAULT=NAME:N` makes the process SIGKILL itself the Nth time it reaches point
NAME, so a test can kill a sweep exactly during an MLflow write or an evaluation.
`RUNNER_FAULT=NAME:N:raise` raises the point's own error there instead, once (a passing
fault), so a test can make the tracking client fail the way it fails for real;
`NAME:N:interrupt` sends the process a SIGINT there, as a Ctrl-C at that moment would.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

_SPEC = os.environ.get("RUNNER_FAULT", "")
_NAME, _, _REST = _SPEC.partition(":")
_COUNT, _, _MODE = _REST.partition(":")
_seen = 0


def point(name: str, error: Callable[[], BaseException] | None = None) -> None:
    global _seen  # one counter per process, by design
    if not _SPEC or name != _NAME:
        return
    _seen += 1
    if _seen != int(_COUNT or 1):
        return
    if _MODE == "raise":
        raise error() if error is not None else RuntimeError(f"injected fault at {name}")
    os.kill(os.getpid(), signal.SIGINT if _MODE == "interrupt" else signal.SIGKILL)
