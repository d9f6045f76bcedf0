"""`--workers N`: N processes on one study, pinned one per core where the cores allow.

Workers share the study's storage and its global budget. Where the store and the storage
are databases or the journal (the default), they are forked from the sweep's process once
it has imported MindSpore, MLflow and Optuna, loaded the data and opened the store: a
worker starts in milliseconds instead of the ~5 s a new `runner.py` pays (measured), so
two workers beat one even for a short sweep. Elsewhere (a tracking server over HTTP,
Optuna's gRPC proxy: their connections cannot cross a fork) each worker is
`runner.py sweep ... --parent-run ID`. Either way the parent forwards Ctrl-C/SIGTERM,
notices workers that die, and recovers their trials at once so that the others retry them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments.runtime import interrupts

FALLBACK_ENV = "RUNNER_DATA_FALLBACK"  # set for workers once the parent fell back
RUNNER = Path(__file__).resolve().parents[2] / "runner.py"
TICK_S = 1.0  # how often the parent looks at the study for trials to show
# A worker stopped by the infrastructure exits with this code and says nothing: its
# parent says it once (EX_TEMPFAIL of sysexits.h: try again later).
EXIT_INFRA = 75
EXIT_INTERRUPTED = 130
REASONS_ENV = "RUNNER_REASONS"


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _pinned(n: int, pin: bool) -> list[int | None]:
    """The core of each of n workers: one each (measured fastest on 2 cores, benchmark
    section 4), or none where there are fewer cores than workers or pinning is off."""
    cpus = usable_cores()
    pin = pin and n <= len(cpus) and os.environ.get("RUNNER_PIN_WORKERS", "1") != "0"
    return [cpus[i] if pin else None for i in range(n)]


def run_workers(argv: list[str], each: list[list[str]], parent: str, store_url: str,
                fallback: str, recover: Callable[[], int],
                tick: Callable[[], None] = lambda: None, pin: bool = True
                ) -> list[tuple[int, str]]:
    """Start a worker per item of `each` running `runner.py sweep *argv *item` (its own
    flags: a device id); returns (exit code, what it said) of those that died (exited
    other than 0; EXIT_INFRA: stopped by the store, its disk or the network, saying what
    broke into a file of REASONS_ENV's folder, for its parent to say). `recover` is called
    as soon as one dies, `tick` every TICK_S. CPU workers are pinned one per core."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    if fallback:
        env[FALLBACK_ENV] = fallback
    # Not beside the store: its disk may be the one that is full.
    reasons = tempfile.TemporaryDirectory(prefix="runner-reasons-")
    env[REASONS_ENV] = reasons.name
    procs: list[Any] = []
    for item, cpu in zip(each, _pinned(len(each), pin), strict=True):
        cmd = [sys.executable, str(RUNNER), "sweep", *argv, *item, "--storage", store_url,
               "--parent-run", parent, *(["--pin-cpu", str(cpu)] if cpu is not None else [])]
        # A process group of their own: a terminal's Ctrl-C reaches the parent only, which
        # forwards one SIGTERM. Signalled twice (by the terminal and by the parent), a
        # worker would stop inside the code that closes its runs.
        procs.append(subprocess.Popen(cmd, env=env, process_group=0,
                                      preexec_fn=interrupts.die_with_parent))
    return _watch(procs, reasons, recover, tick)


def fork_workers(n: int, body: Callable[[int], int], recover: Callable[[], int],
                 tick: Callable[[], None] = lambda: None, pin: bool = True,
                 before: Callable[[], None] = lambda: None) -> list[tuple[int, str]]:
    """As `run_workers`, with n forks of this process each exiting with `body(i)`, or as
    `worker_exit` says for what it raised. `before` runs just before the forks: it closes
    the pooled connections a fork must not share. MindSpore must not have run a graph in
    this process (a fork keeps one thread; its runtime's are gone)."""
    reasons = tempfile.TemporaryDirectory(prefix="runner-reasons-")
    procs: list[Any] = []
    sys.stdout.flush()
    sys.stderr.flush()
    before()
    parent = os.getpid()
    for i, cpu in enumerate(_pinned(n, pin)):
        pid = os.fork()
        if pid == 0:
            _child(i, cpu, body, reasons.name, parent)
        procs.append(_Forked(pid))
    return _watch(procs, reasons, recover, tick)


def _child(i: int, cpu: int | None, body: Callable[[int], int], reasons: str,
           parent: int) -> None:
    code = 1
    try:
        os.setpgid(0, 0)  # its own process group, as a `runner.py` worker's (see above)
        # A parent killed with -9 must not leave its workers training on, unseen: they get
        # SIGTERM and stop as after Ctrl-C (a parent gone before this line: stop now).
        interrupts.die_with_parent()
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        code = worker_exit(lambda: body(i), reasons)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # not the parent's atexit handlers, nor its `finally` blocks


def worker_exit(work: Callable[[], int], reasons: str | None) -> int:
    """A worker's exit code: what `work` returns, EXIT_INTERRUPTED, or EXIT_INFRA with
    what broke written for the parent; anything else is raised (a bug: a traceback)."""
    from experiments.runtime import infra

    try:
        return work()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        broke = exc.broke if isinstance(exc, infra.InfrastructureDown) else \
            infra.what_broke(exc)
        if not broke:
            raise
        if reasons:
            with contextlib.suppress(OSError):
                Path(reasons, f"{os.getpid()}.reason").write_text(broke, encoding="utf-8")
        return EXIT_INFRA


class _Forked:
    """A forked worker, seen through the part of `subprocess.Popen` the watch uses."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)


def _watch(procs: list[Any], reasons: tempfile.TemporaryDirectory, recover: Callable[[], int],
           tick: Callable[[], None]) -> list[tuple[int, str]]:
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
    said = {}
    for path in Path(reasons.name).glob("*.reason"):
        with contextlib.suppress(OSError, ValueError):
            said[int(path.stem)] = path.read_text(encoding="utf-8").strip()
    # Now, not at exit: a finished command ends with os._exit, which runs no finalizer.
    reasons.cleanup()
    interrupts.check()
    return [(procs[i].returncode, said.get(procs[i].pid, "")) for i in sorted(died)]
