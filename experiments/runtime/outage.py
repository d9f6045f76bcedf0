"""Riding out an outage: a tracking server or a database that went away may come back.

An unattended sweep met a tracking server restarted for 150 s and stopped after ~30 s
(three trials in a row cut short), although the server came back (reproduced). A failure
of the network kind (a server or database unreachable, restarting, a connection lost) is
now waited out: the process says so in one line, asks the infrastructure again with a
growing pause (1 s doubling to 30 s), and goes on when it answers, saying so; only after
WAIT_S (RUNNER_OUTAGE_WAIT_S, 10 minutes by default) does it stop with the usual line.
Nothing is lost meanwhile: the trial that the outage cut short is queued again, and the
runs it could not close are closed when the sweep ends. A disk that is full or read-only
does not come back by itself: that stops as before, after MAX_IN_A_ROW failures.

A worker speaks through its parent (`workers.leave_word`), which says each line once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from experiments.runtime import infra, interrupts, workers
from experiments.runtime.progress import span

WAIT_S = float(os.environ.get("RUNNER_OUTAGE_WAIT_S", "600"))
MAX_PAUSE_S = 30.0
# What infra.what_broke calls failures that may pass by themselves.
PASSING = ("server unreachable", "tracking server unavailable", "tracking server error",
           "connection lost", "database connection lost", "database restarted",
           "database unreachable", "database restarting", "storage proxy unreachable")


def passes(broke: str) -> bool:
    """Whether a failure (as infra.what_broke says it) may pass without the user."""
    return broke.startswith(PASSING)


def ride_out(broke: str, probe: Callable[[], None], say: Callable[[str], None],
             wait_s: float | None = None) -> bool:
    """Wait until `probe()` stops failing on the infrastructure; True if it had to wait
    (an outage came and went), False if it answered at once. InfrastructureDown once
    `wait_s` (WAIT_S) has passed; KeyboardInterrupt on Ctrl-C; any other error of the
    probe is raised as it is."""
    budget = WAIT_S if wait_s is None else wait_s
    if _answers(probe):
        return False
    start, pause, tries = time.monotonic(), 1.0, 1
    _tell(say, f"waiting: {broke}; asking again for up to {span(budget)} "
               "(RUNNER_OUTAGE_WAIT_S), nothing is lost meanwhile")
    while True:
        left = budget - (time.monotonic() - start)
        if left <= 0:
            # The waiting line is not taken back: a parent that saw no worker waiting any
            # more said the server was back when it never came (review, reproduced).
            raise infra.InfrastructureDown(f"{broke}; waited {span(budget)} for it", tries)
        _sleep(min(pause, left))
        pause = min(pause * 2, MAX_PAUSE_S)
        tries += 1
        if _answers(probe):
            _tell(say, None)
            say(f"back after {span(time.monotonic() - start)}: the sweep goes on")
            return True


def _answers(probe: Callable[[], None]) -> bool:
    try:
        probe()
    except Exception as exc:
        if not infra.what_broke(exc):
            raise
        return False
    return True


def _sleep(seconds: float) -> None:
    """A pause that Ctrl-C ends."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        interrupts.check()
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))
    interrupts.check()


def _tell(say: Callable[[str], None], text: str | None) -> None:
    """The waiting line: said here, or left for the parent (None: the wait is over)."""
    if not workers.leave_word("waiting", text) and text is not None:
        say(text)
