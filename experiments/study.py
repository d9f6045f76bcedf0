"""Everything Optuna: storage, samplers, pruners, the global budget and crash recovery.

The default storage is Optuna's journal file in `mlruns/optuna/`, which is built for
several processes on one machine (SQLite is not). `--storage postgresql://...` uses the
RDB storage with heartbeats, so trials of a worker that died on another machine are
failed and retried by the survivors.

The budget (`n_trials`) is global: a trial counts when it completed, was pruned or failed
for a reason of its own. Trials that crashed, were interrupted or were refused for the
budget do not count; crashed and interrupted ones are retried once with the same params.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments import faults, interrupts
from experiments.retry import retry
from experiments.sweepfile import Param, Sweep

FAIL_KIND = "fail_kind"  # user attr: why a FAIL trial does not count towards the budget
# A worker that stops beating for GRACE_S is taken for dead (RDB storage only).
HEARTBEAT_S = int(os.environ.get("RUNNER_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("RUNNER_GRACE_S", "30"))

optuna.logging.set_verbosity(optuna.logging.ERROR)


class OverBudget(Exception):
    """This trial was asked for after the global budget was taken by others."""


def storage(url: str | None, root: Path, on_crashed: Callable[..., None]) -> Any:
    """The study storage: a journal file by default, an RDB (with heartbeats) for URLs."""
    if not url or url.startswith("journal:") or url.endswith(".log"):
        path = Path(url.removeprefix("journal:")) if url else root / "optuna" / "journal.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return retry(lambda: optuna.storages.RDBStorage(
        url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
        failed_trial_callback=lambda study, t: on_crashed(study, t, "heartbeat")))


def _sampler(spec: Sweep, seed: int) -> optuna.samplers.BaseSampler:
    samplers = optuna.samplers
    if spec.method == "grid":
        return samplers.GridSampler(spec.grid(), seed=seed)
    if spec.method == "random":
        return samplers.RandomSampler(seed=seed)
    if spec.method == "cmaes":
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if spec.method == "qmc":
        return samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if spec.method == "gp":
        return samplers.GPSampler(seed=seed)
    return samplers.TPESampler(seed=seed)


def _pruner(spec: Sweep) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=spec.warmup_epochs)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, spec.warmup_epochs))
    return optuna.pruners.NopPruner()


def open_study(spec: Sweep, store: Any) -> optuna.Study:
    """Create or load the study (the sampler is re-seeded per trial, see `work`)."""
    study = retry(lambda: optuna.create_study(study_name=spec.name, storage=store,
                                              load_if_exists=True, direction=spec.goal))
    study.sampler = _sampler(spec, spec.seed)
    study.pruner = _pruner(spec)
    return study


def trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def budget(spec: Sweep) -> int:
    """n_trials, capped for a grid at the number of grid points."""
    if spec.method == "grid":
        return min(spec.n_trials, math.prod(len(p.values) for p in spec.parameters))
    return spec.n_trials


def counts(t: FrozenTrial) -> bool:
    """Whether a trial uses up budget: finished, or failed for a reason of its own (the
    objective records `fail_reason`; crashes, interrupts and refusals leave none)."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and "fail_reason" in t.user_attrs


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if counts(t)]


def _within_budget(study: optuna.Study, number: int, limit: int) -> bool:
    """Whether trial `number` is among the first `limit` that count or run. Every worker
    applies the same rule to the same trial numbers, so the budget is never overshot."""
    taken = sorted(t.number for t in study.get_trials(deepcopy=False)
                   if counts(t) or t.state == TrialState.RUNNING)
    return number in taken[:limit]


def suggest(trial: optuna.Trial, params: tuple[Param, ...]) -> dict[str, Any]:
    """Sample one configuration: {config key: value}."""
    out: dict[str, Any] = {}
    for p in params:
        if p.distribution == "constant":
            out[p.key] = p.values[0]
        elif p.distribution == "categorical":
            out[p.key] = trial.suggest_categorical(p.key, list(p.values))
        elif p.distribution == "int_uniform":
            out[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high))
        elif p.distribution == "log_uniform_values":
            out[p.key] = trial.suggest_float(p.key, p.low, p.high, log=True)
        elif p.distribution == "q_uniform":
            if isinstance(p.low, int) and isinstance(p.high, int):
                out[p.key] = trial.suggest_int(p.key, p.low, p.high, step=int(p.q))
            else:
                out[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.q)
        else:
            out[p.key] = trial.suggest_float(p.key, p.low, p.high)
    return out


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive_here(worker: str) -> bool:
    """Whether a worker on this host is still a running runner.py process."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's worker: heartbeats (RDB) decide for it
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"runner.py" in cmdline


def mark_failed(study: optuna.Study, t: FrozenTrial, kind: str, set_state: bool = True,
                how: str = "") -> None:
    """Fail a trial that will not finish, and queue its params for one retry."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(t._trial_id, FAIL_KIND, kind)
        if set_state:
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Finished meanwhile by someone else; unless that was the heartbeat check failing
        # it for us (then the retry below is ours to queue), there is nothing to do.
        if how != "heartbeat":
            return
    if "retry_of" not in t.user_attrs and t.params:
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "retry_reason": kind,
                                                  "crash_detected_by": how},
                            skip_if_exists=False)


def recover(study: optuna.Study, on_crashed: Callable[..., None]) -> int:
    """Fail the RUNNING trials whose process on this host is gone; returns how many."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _alive_here(t.user_attrs.get("worker", "")):
            on_crashed(study, t, "process gone")
            n += 1
    return n


def work(study: optuna.Study, spec: Sweep, objective: Callable[[optuna.Trial], float],
         on_done: Callable[[FrozenTrial], None], on_crashed: Callable[..., None],
         deadline: float | None = None, poll_s: float = 1.0) -> None:
    """Run trials until the global budget is met or the deadline passes.

    When the trials still running elsewhere would use up the budget, wait for them rather
    than start more: they may fail (a crashed worker) and free their slot for a retry.
    """
    limit = budget(spec)
    me = worker_id()

    def wrapped(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", me)
        faults.point("trial_start")
        if not _within_budget(study, trial.number, limit):
            trial.set_user_attr(FAIL_KIND, "over_budget")
            raise OverBudget
        # Seeded by trial number, which is unique across workers and resumes: parallel or
        # resumed workers never replay one another's draws, and one worker is reproducible.
        # QMC indexes its sequence by trial number already and must keep one seed.
        if spec.method != "qmc":
            study.sampler = _sampler(spec, trial_seed(spec.seed, trial.number))
        try:
            value = objective(trial)
            faults.point("before_tell")
            return value
        except OverBudget:
            raise
        except Exception as exc:
            if "fail_reason" not in trial.user_attrs:
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:1000])
            raise
        except KeyboardInterrupt:
            # Optuna itself marks the trial FAIL as the interrupt passes through it.
            mark_failed(study, study._storage.get_trial(trial._trial_id), "interrupted",
                        set_state=False)
            raise

    while deadline is None or time.time() < deadline:
        interrupts.check()
        trials = study.get_trials(deepcopy=False)
        done = sum(counts(t) for t in trials)
        if done >= limit:
            return
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if done + len(running) >= limit:
            # RDB storage knows dead workers on any machine by their heartbeat; the journal
            # (one machine) by their process. Optuna wraps an RDBStorage in a cache, so test
            # for the journal: an isinstance test for RDBStorage is always false, and then a
            # dead worker on another machine was never failed and this loop waited forever.
            if isinstance(study._storage, optuna.storages.JournalStorage):
                recover(study, on_crashed)
            else:
                optuna.storages.fail_stale_trials(study)
            time.sleep(poll_s)
            continue
        study.optimize(wrapped, n_trials=1, catch=(Exception,), gc_after_trial=False)
        mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == me]
        if mine and mine[-1].user_attrs.get(FAIL_KIND) != "over_budget":
            on_done(mine[-1])
