"""Retry for races between workers: the loser of a create-if-missing retries and then
finds what the winner made."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def retry(make: Callable[[], Any], attempts: int = 5,
          catch: type[BaseException] | tuple = Exception, pause_s: float = 0.5,
          growth_s: float = 1.0) -> Any:
    """`make()`, tried up to `attempts` times; waits pause_s + growth_s * attempt between."""
    for attempt in range(attempts):
        try:
            return make()
        except catch:
            if attempt == attempts - 1:
                raise
            time.sleep(pause_s + growth_s * attempt)
    raise AssertionError("unreachable")
