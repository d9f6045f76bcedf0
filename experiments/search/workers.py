"""`--workers N`: N processes on one study, pinned one per core where the cores allow.

Each worker is `runner.py sweep ... --parent-run ID` on the same storage; the budget is
global, so they share it. The parent forwards Ctrl-C/SIGTERM, notices workers that die,
and recovers their trials at once so that the others retry them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from experiments.runtime import interrupts

FALLBACK_ENV = "RUNNER_DATA_FALLBACK"  # set for workers once the parent fell back
RUNNER = Path(__file__).resolve().parents[2] / "runner.py"
TICK_S = 1.0  # how often the parent looks at the study for trials to show
# A worker stopped by the infrastructure exits with this code and says nothing: its
# parent says it once (EX_TEMPFAIL of sysexits.h: try again later).
EXIT_INFRA = 75
REASONS_ENV = "RUNNER_REASONS"


def run_workers(argv: list[str], each: list[list[str]], parent: str, store_url: str,
                fallback: str, recover: Callable[[], int],
                tick: Callable[[], None] = lambda: None, pin: bool = True
                ) -> list[tuple[int, str]]:
    """Start a worker per item of `each` running `runner.py sweep *argv *item` (its own
    flags: a device id); returns (exit code, what it said) of those that died (exited
    other than 0; EXIT_INFRA: stopped by the store, its disk or the network, saying what
    broke into a file of REASONS_ENV's folder, for its parent to say). `recover` is called
    as soon as one dies, `tick` every TICK_S. CPU workers are pinned one per core."""
    n = len(each)
    cpus = sorted(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    if fallback:
        env[FALLBACK_ENV] = fallback
    # Not beside the store: its disk may be the one that is full.
    reasons = tempfile.TemporaryDirectory(prefix="runner-reasons-")
    env[REASONS_ENV] = reasons.name
    # One core each measured fastest on 2 cores (benchmark section 4).
    pin = pin and n <= len(cpus) and os.environ.get("RUNNER_PIN_WORKERS", "1") != "0"
    procs = []
    for i in range(n):
        cmd = [sys.executable, str(RUNNER), "sweep", *argv, *each[i], "--storage", store_url,
               "--parent-run", parent, *(["--pin-cpu", str(cpus[i])] if pin else [])]
        # A process group of their own: a terminal's Ctrl-C reaches the parent only, which
        # forwards one SIGTERM. Signalled twice (by the terminal and by the parent), a
        # worker would stop inside the code that closes its runs.
        procs.append(subprocess.Popen(cmd, env=env, process_group=0))
    died: set[int] = set()
    passed_on, ticked = 0, time.time()
    # Shielded: a second Ctrl-C must not end this loop before the workers are told (they
    # would train on, unseen, in their own process group); it is passed on like the first,
    # and the interrupt is raised once every worker has closed its runs and exited.
    with interrupts.shielded():
        while True:
            while passed_on < min(interrupts.received(), 2):
                passed_on += 1
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
            for i, p in enumerate(procs):
                if p.poll() not in (None, 0) and i not in died and not passed_on:
                    died.add(i)
                    recover()
            if all(p.poll() is not None for p in procs):
                break
            if time.time() - ticked >= TICK_S and not passed_on:
                # A storage hiccup while showing progress must never end the watch over
                # the workers; the next tick shows what this one missed.
                with contextlib.suppress(Exception):
                    tick()
                ticked = time.time()
            time.sleep(0.1)
    interrupts.check()
    said = {}
    for path in Path(reasons.name).glob("*.reason"):
        with contextlib.suppress(OSError, ValueError):
            said[int(path.stem)] = path.read_text(encoding="utf-8").strip()
    reasons.cleanup()
    return [(procs[i].returncode, said.get(procs[i].pid, "")) for i in sorted(died)]
