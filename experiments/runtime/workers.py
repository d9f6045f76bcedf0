"""Worker processes of one command, pinned one per core where the cores allow, and the
protocol between a worker and its parent, in one place.

Workers are forked from the command's process (`fork_workers`: milliseconds, instead of
the ~5 s a new Python process pays to import MindSpore, MLflow and Optuna, measured) or,
where connections cannot cross a fork, started as commands (`run_workers`). Either way the
parent passes Ctrl-C/SIGTERM on, notices workers that die (and calls `recover` at once so
the others retry their work), and speaks for them: a worker prints nothing.

The protocol: a worker's exit code says how it ended (0, EXIT_INTERRUPTED, EXIT_INFRA
when the infrastructure stopped it), and it leaves words for its parent in a folder of
the parent's (WORDS_ENV, off the store's disk, which may be the full one): what broke
(`reason`), and an outage it is waiting out (`waiting`). The parent says each once.
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

from experiments.runtime import faults, interrupts, progress

TICK_S = 1.0  # how often the parent looks at the study for trials to show
# How a worker ended, as its exit code. Stopped by the infrastructure: EX_TEMPFAIL of
# sysexits.h (try again later); the parent says what broke, once for all its workers.
EXIT_INFRA = 75
EXIT_INTERRUPTED = 130
WORDS_ENV = "RUNNER_REASONS"  # the parent's folder for its workers' words
Command = Callable[[int, int | None], list[str]]  # (worker index, its core) -> argv


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _pinned(n: int, pin: bool) -> list[int | None]:
    """The core of each of n workers: one each (measured fastest on 2 cores, benchmark
    section 4), or none where there are fewer cores than workers or pinning is off."""
    cpus = usable_cores()
    pin = pin and n <= len(cpus) and os.environ.get("RUNNER_PIN_WORKERS", "1") != "0"
    return [cpus[i] if pin else None for i in range(n)]


# --- a worker's side --------------------------------------------------------------------


def leave_word(kind: str, text: str | None) -> bool:
    """In a worker: leave `text` for the parent under `kind` (None takes it back); False
    in a process with no parent to tell, which then speaks for itself."""
    folder = os.environ.get(WORDS_ENV)
    if not folder:
        return False
    path = Path(folder, f"{os.getpid()}.{kind}")
    with contextlib.suppress(OSError):
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text, encoding="utf-8")
    return True


def stopped_by(broke: str) -> int:
    """A worker stopped by the infrastructure: what broke, left for the parent; the exit
    code that says so."""
    leave_word("reason", broke)
    return EXIT_INFRA


def worker_exit(work: Callable[[], int]) -> int:
    """A worker's exit code: what `work` returns, EXIT_INTERRUPTED, or EXIT_INFRA with
    what broke left for the parent; anything else is raised (a bug: a traceback)."""
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
        return stopped_by(broke)


# --- the parent's side ------------------------------------------------------------------


def run_workers(command: Command, n: int, env: dict[str, str], recover: Callable[[], int],
                tick: Callable[[], None] = lambda: None,
                say: Callable[[str], None] = lambda line: None, pin: bool = True
                ) -> list[tuple[int, str]]:
    """Start n processes, `command(i, core)` each, with `env`; returns (exit code, what
    it said) of those that died (exited other than 0). `recover` is called as soon as one
    dies, `tick` every TICK_S; `say` says the workers' words."""
    words = tempfile.TemporaryDirectory(prefix="runner-reasons-")
    procs: list[Any] = []
    for i, cpu in enumerate(_pinned(n, pin)):
        # A process group of their own: a terminal's Ctrl-C reaches the parent only, which
        # forwards one SIGTERM. Signalled twice (by the terminal and by the parent), a
        # worker would stop inside the code that closes its runs.
        procs.append(subprocess.Popen(command(i, cpu), env={**env, WORDS_ENV: words.name},
                                      process_group=0, preexec_fn=interrupts.die_with_parent))
    return _watch(procs, words, recover, tick, say)


def fork_workers(n: int, body: Callable[[int], int], recover: Callable[[], int],
                 tick: Callable[[], None] = lambda: None,
                 say: Callable[[str], None] = lambda line: None, pin: bool = True,
                 before: Callable[[], None] = lambda: None) -> list[tuple[int, str]]:
    """As `run_workers`, with n forks of this process each exiting with `body(i)`, or as
    `worker_exit` says for what it raised. `before` runs just before the forks: it closes
    the pooled connections a fork must not share. MindSpore must not have run a graph in
    this process (a fork keeps one thread; its runtime's are gone)."""
    faults.point("forking")
    interrupts.check()  # a Ctrl-C during start-up starts no worker
    words = tempfile.TemporaryDirectory(prefix="runner-reasons-")
    procs: list[Any] = []
    sys.stdout.flush()
    sys.stderr.flush()
    before()
    parent = os.getpid()
    # A worker counts the SIGTERM its parent passes on as its own first signal: it used to
    # inherit the parent's count, took that SIGTERM for a second Ctrl-C and died with a
    # traceback (reproduced). Signals are held back across the forks, so none reaches a
    # worker before it has reset its count.
    with interrupts.blocked():
        for i, cpu in enumerate(_pinned(n, pin)):
            pid = os.fork()
            if pid == 0:
                os.environ[WORDS_ENV] = words.name
                interrupts.after_fork()
                _child(i, cpu, body, parent)
            procs.append(_Forked(pid))
    return _watch(procs, words, recover, tick, say)


def _child(i: int, cpu: int | None, body: Callable[[int], int], parent: int) -> None:
    code = 1
    try:
        os.setpgid(0, 0)  # its own process group, as a command worker's (see above)
        # A parent killed with -9 must not leave its workers training on, unseen: they get
        # SIGTERM and stop as after Ctrl-C (a parent gone before this line: stop now).
        interrupts.die_with_parent()
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        code = worker_exit(lambda: body(i))
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # not the parent's atexit handlers, nor its `finally` blocks


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


class _Waiting:
    """The workers' outage, said once by the parent: when the first starts waiting, and
    when the last is back."""

    def __init__(self, folder: str, say: Callable[[str], None]) -> None:
        self.folder, self.say, self.since = Path(folder), say, 0.0

    def look(self, last: bool = False) -> None:
        """Say what changed since the last look; the `last` look, once the workers are
        gone, says only an end: a wait it never saw begin is not news any more."""
        texts = []
        for path in sorted(self.folder.glob("*.waiting")):
            with contextlib.suppress(OSError):
                texts.append(path.read_text(encoding="utf-8").strip())
        if texts and not self.since and not last:
            self.since = time.monotonic()
            self.say(texts[0])
        elif not texts and self.since:
            waited = progress.span(time.monotonic() - self.since)
            self.say(f"back after {waited}: the sweep goes on")
            self.since = 0.0


def _watch(procs: list[Any], words: tempfile.TemporaryDirectory, recover: Callable[[], int],
           tick: Callable[[], None], say: Callable[[str], None]) -> list[tuple[int, str]]:
    died: set[int] = set()
    passed_on, ticked = 0, time.time()
    waiting = _Waiting(words.name, say)
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
                waiting.look()
                ticked = time.time()
            time.sleep(0.1)
    if not passed_on:
        # A worker that sees the server back may meet the budget and exit within one tick:
        # the parent had said `waiting:` and never `back after` (CI, reproduced).
        waiting.look(last=True)
    faults.point("workers_done")
    said = {}
    for path in Path(words.name).glob("*.reason"):
        with contextlib.suppress(OSError, ValueError):
            said[int(path.stem)] = path.read_text(encoding="utf-8").strip()
    # Now, not at exit: a finished command ends with os._exit, which runs no finalizer.
    # Whether a signal cut the sweep short is the caller's to say: it did not if the
    # workers met the budget first.
    words.cleanup()
    return [(procs[i].returncode, said.get(procs[i].pid, "")) for i in sorted(died)]
