"""Whether a trial's worker is alive: its process on this host, or its beats.

A journal's workers share one host, so a trial's worker (`host:pid`) is alive while its
process is. RDB storage judges workers on other hosts by Optuna's heartbeats; a storage
without them (Optuna's gRPC proxy) by the runner's own beats, written by a thread while
a trial trains.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments.search.study import internals, storage

# A trial that names no worker after GRACE_S was left by a process killed as it created it.
GRACE_S = storage.GRACE_S
# A FAIL trial's user attr: why it does not count (crashed, interrupted, the
# infrastructure, refused), not failed by its config. The budget's rules (trials/) and
# what W&B's engine is shown (wandb_*.py) read it.
FAIL_KIND = "fail_kind"


def cut_short(t: FrozenTrial) -> bool:
    """Whether trial `t` was cut short or refused: queued again (its retry is the config's
    result) or turned away, never a result of its own."""
    return t.state == TrialState.FAIL and FAIL_KIND in t.user_attrs


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def age_s(t: FrozenTrial) -> float:
    start = t.datetime_start
    if start is None:
        return math.inf
    now = datetime.now(UTC) if start.tzinfo else datetime.now()
    return (now - start).total_seconds()


def alive(worker: str | None) -> bool:
    """Whether a worker (`host:pid`) may still be running: a runner.py process on this host,
    or any worker on another host (heartbeats judge those, on RDB storage)."""
    host, _, pid = (worker or "").rpartition(":")
    if not pid.isdigit():
        return False
    if host != socket.gethostname():
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"runner.py" in cmdline


def recognisable() -> bool:
    """Whether this process, and so a fork of it, passes `alive` (a runner.py command):
    a worker forked from anything else would be taken for dead by its siblings."""
    return alive(worker_id())


def silent(t: FrozenTrial) -> bool:
    """Whether a trial's worker beat (storages without Optuna's heartbeats) and stopped
    beating more than GRACE_S ago: dead, on whatever host."""
    last = t.system_attrs.get(internals.BEAT)
    return isinstance(last, float | int) and time.time() - last > GRACE_S


@contextlib.contextmanager
def beating(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """A thread that says the trial's worker is alive every HEARTBEAT_S while it trains."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            with contextlib.suppress(Exception):  # a hiccup: the next beat will do
                internals.beat(study, trial)
            if stop.wait(storage.HEARTBEAT_S):
                return

    thread = threading.Thread(target=loop, name="runner-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def dead_here(t: FrozenTrial) -> bool:
    """Whether a RUNNING trial's process is gone. A trial that names no worker was left by
    a process killed between creating it and naming itself (milliseconds apart): dead
    once it is older than the grace period, on any storage."""
    worker = t.user_attrs.get("worker", "")
    if not worker:
        return age_s(t) > GRACE_S
    return not alive(worker)


def still_running(t: FrozenTrial) -> bool:
    """A RUNNING trial some live worker is running. A process runs one trial at a time, so
    a RUNNING trial that names this one (a failed write left it so) runs nowhere."""
    return t.user_attrs.get("worker") != worker_id() and not dead_here(t) and not silent(t)


def fail_stale(study: optuna.Study) -> None:
    """Trials of workers whose Optuna heartbeats stopped (RDB storage, any host): failed,
    and queued again by the storage's callback. (Workers through the gRPC proxy beat by
    themselves: `silent` judges them.)"""
    if internals.native_heartbeat(study):
        with warnings.catch_warnings():  # "experimental" since Optuna 2.x
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)

