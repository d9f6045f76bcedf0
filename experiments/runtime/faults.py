"""Named fault points for the fault-injection tests; inert unless RUNNER_FAULT is set.

`RUNNER_FAULT=NAME:N` makes the process SIGKILL itself the Nth time it reaches point
NAME, so a test can kill a sweep exactly during an MLflow write or an evaluation.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("RUNNER_FAULT", "")
_NAME, _, _COUNT = _SPEC.partition(":")
_seen = 0


def point(name: str) -> None:
    global _seen  # one counter per process, by design
    if not _SPEC or name != _NAME:
        return
    _seen += 1
    if _seen >= int(_COUNT or 1):
        os.kill(os.getpid(), signal.SIGKILL)
