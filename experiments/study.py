"""Everything Optuna: storage, samplers, pruners, the global budget and crash recovery.

The default storage is Optuna's journal file in `mlruns/optuna/`, which is built for
several processes on one machine (SQLite is not). `--storage postgresql://...` uses the
RDB storage with heartbeats, so trials of a worker that died on another machine are
failed and retried by the survivors.

The budget (`n_trials`) is global: a trial counts when it completed, was pruned or failed
for a reason of its own. Trials that crashed, were interrupted or were refused (over the
budget, a duplicate) do not count; crashed and interrupted ones are retried once with the
same params. Every use of Optuna's private API is in this module.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments import faults, interrupts
from experiments.retry import retry
from experiments.sweepfile import Param, Sweep, SweepError

FAIL_KIND = "fail_kind"  # user attr: why a FAIL trial does not count towards the budget
REFUSALS = ("over_budget", "duplicate", "no_grid_point")  # trials refused before training
LOST = ("crashed", "interrupted")  # trials that started training and did not finish
# A claim names what a trial is for (a grid point, the retry of a trial): of the trials
# with the same claim, only the lowest-numbered live one trains.
CLAIM, GRID_POINT = "claim", "grid_point"
MEANING, FINGERPRINT = "sweep.meaning", "sweep.fingerprint"  # study user attrs
# A worker that stops beating for GRACE_S is taken for dead (RDB storage); a trial that
# names no worker after GRACE_S was left by a process killed as it created it.
HEARTBEAT_S = int(os.environ.get("RUNNER_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("RUNNER_GRACE_S", "30"))

optuna.logging.set_verbosity(optuna.logging.ERROR)


class Refused(Exception):
    """This trial must not train: over the global budget, or a duplicate of another."""


@dataclass
class Recovery:
    """What happens to a trial that will not finish: it is failed, its params are queued
    for one retry, and `close_runs` (plugged in by the tracking side once the store is
    open) marks and closes its runs."""

    close_runs: Callable[[optuna.Study, FrozenTrial, str], None] = lambda study, t, kind: None

    def lost(self, study: optuna.Study, t: FrozenTrial, kind: str, how: str = "",
             set_state: bool = True) -> None:
        mark_failed(study, t, kind, set_state=set_state, how=how)
        self.close_runs(study, latest(study, t), kind)


def storage(url: str | None, root: Path, recovery: Recovery, create: bool = True) -> Any:
    """The study storage: a journal file by default, an RDB (with heartbeats) for URLs.
    With `create` False, None where the journal file does not exist yet (no study can)."""
    if not url or url.startswith("journal:") or url.endswith(".log"):
        path = Path(url.removeprefix("journal:")) if url else root / "optuna" / "journal.log"
        if not create and not path.exists():
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return retry(lambda: optuna.storages.RDBStorage(
        url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
        failed_trial_callback=lambda study, t: recovery.lost(study, t, "crashed", "heartbeat")))


def latest(study: optuna.Study, t: FrozenTrial | optuna.Trial) -> FrozenTrial:
    """The trial as the storage has it now."""
    return study._storage.get_trial(t._trial_id)


def is_journal(study: optuna.Study) -> bool:
    # Optuna wraps an RDBStorage in a cache, so an isinstance test for RDBStorage is always
    # false; the journal is not wrapped.
    return isinstance(study._storage, optuna.storages.JournalStorage)


# --- samplers and pruners ---------------------------------------------------------------


def trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _make_sampler(method: str, seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        # QMC and GP are marked experimental; the warning says nothing the user can act on.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _new_sampler(method, seed)


def _new_sampler(method: str, seed: int) -> optuna.samplers.BaseSampler:
    samplers = optuna.samplers
    if method == "cmaes":
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if method == "qmc":
        return samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if method == "gp":
        return samplers.GPSampler(seed=seed)
    if method == "tpe":
        return samplers.TPESampler(seed=seed)
    # random, and grid: a grid trial's params come from the queue (see `_top_up_grid`).
    return samplers.RandomSampler(seed=seed)


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler made afresh for each trial, seeded by (sweep seed, trial number).

    Trial numbers are unique across workers and resumes, so parallel or resumed workers
    never replay one another's draws, one worker is reproducible, and `--dry-run` shows
    exactly the draws the run makes. The inner sampler sees the whole trial, from
    `before_trial` to `after_trial`, with one seed.
    """

    def __init__(self, method: str, seed: int) -> None:
        self._method, self._seed = method, seed
        self._number: int | None = None
        self._inner = _make_sampler(method, seed)

    def _for(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number != self._number:
            self._number = trial.number
            self._inner = _make_sampler(self._method, trial_seed(self._seed, trial.number))
        return self._inner

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict
                        ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name,
                                                   param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self._for(trial).after_trial(study, trial, state, values)


def sampler(spec: Sweep) -> optuna.samplers.BaseSampler:
    # QMC indexes its sequence by trial number already and must keep one seed.
    if spec.method == "qmc":
        return _make_sampler("qmc", spec.seed)
    return PerTrialSeed(spec.method, spec.seed)


def _pruner(spec: Sweep) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=spec.warmup_epochs)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, spec.warmup_epochs))
    return optuna.pruners.NopPruner()


# --- one study, one question ------------------------------------------------------------


def changes(spec: Sweep, study: optuna.Study) -> list[str]:
    """What the sweep file asks that the study was not created for: 'part: old -> new'."""
    out = []
    goal = study.direction.name.lower()
    old = study.user_attrs.get(MEANING) or {}
    if goal != spec.goal or old.get("metric", f"{goal} {spec.metric}") != \
            f"{spec.goal} {spec.metric}":
        out.append(f"metric: {old.get('metric', goal)} -> {spec.goal} {spec.metric}")
    if not old:
        return out  # a study from before fingerprints: only its direction is known
    new = spec.meaning()
    for part in ("method", "ablation"):
        if old.get(part) != new[part]:
            out.append(f"{part}: {old.get(part)} -> {new[part]}")
    for part in ("fixed", "parameters"):
        was, now = old.get(part, {}), new[part]
        for key in sorted(set(was) | set(now)):
            if was.get(key) != now.get(key):
                out.append(f"{part}.{key}: {was.get(key, '(none)')} -> {now.get(key, '(none)')}")
    return out


def check(spec: Sweep, store: Any, allow_change: bool = False) -> list[str]:
    """The changes between the sweep file and the study of its name, if one exists.

    Raises SweepError (before anything is written) when the file asks another question;
    returns the changes that `allow_change` lets through, to be recorded.
    """
    try:
        study = optuna.load_study(study_name=spec.name, storage=store)
    except KeyError:
        return []
    changed = changes(spec, study)
    if not changed:
        return []
    n = len(study.get_trials(deepcopy=False))
    what = "; ".join(changed)
    if changed[0].startswith("metric:"):
        raise SweepError(f"{spec.path}: study '{spec.name}' ({n} trials) optimises another "
                         f"objective ({what}); an Optuna study keeps one metric and "
                         "direction: give the sweep a new `name`")
    if not allow_change:
        raise SweepError(f"{spec.path}: study '{spec.name}' ({n} trials) was created for "
                         f"another sweep: {what}; give the sweep a new `name`, or rerun with "
                         "--allow-change to continue it and record the change on its parent run")
    return changed


def open_study(spec: Sweep, store: Any) -> optuna.Study:
    """Load or create the study for `spec` (checked by `check` first), recording what it
    asks (its meaning and fingerprint) on it."""
    study = retry(lambda: optuna.create_study(study_name=spec.name, storage=store,
                                              load_if_exists=True, direction=spec.goal))
    if study.user_attrs.get(FINGERPRINT) != spec.fingerprint():
        study.set_user_attr(MEANING, spec.meaning())
        study.set_user_attr(FINGERPRINT, spec.fingerprint())
    study.sampler = sampler(spec)
    study.pruner = _pruner(spec)
    return study


# --- the budget -----------------------------------------------------------------------


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


def _holds(t: FrozenTrial) -> bool:
    """Whether a trial holds its claim: it will train, trains, or trained and counted."""
    return t.state in (TrialState.WAITING, TrialState.RUNNING) or counts(t)


def _refusal(trials: list[FrozenTrial], trial: optuna.Trial, spec: Sweep, limit: int) -> str:
    """Why `trial` must not train, or ''. Every worker applies the same rules to the same
    trial numbers, so the budget is never overshot and no claim is trained twice."""
    attrs = trial.user_attrs
    if spec.method == "grid" and GRID_POINT not in attrs:
        return "no_grid_point"  # lost a race for the queue: the sampler made a fresh trial
    claim = attrs.get(CLAIM)
    if claim and any(t.number < trial.number and t.user_attrs.get(CLAIM) == claim and _holds(t)
                     for t in trials):
        return "duplicate"
    taken = sorted(t.number for t in trials if counts(t) or t.state == TrialState.RUNNING)
    return "" if trial.number in taken[:limit] else "over_budget"


def _top_up_grid(study: optuna.Study, spec: Sweep, trials: list[FrozenTrial],
                 limit: int) -> None:
    """Queue the grid points no trial holds, as many as the budget still needs.

    Each point is queued with its claim; two workers queueing the same point at once
    leave a duplicate, which `_refusal` turns away when it is popped.
    """
    held = {t.user_attrs.get(GRID_POINT) for t in trials if _holds(t)}
    need = limit - sum(_holds(t) for t in trials)
    free = [i for i in range(len(spec.grid_points())) if i not in held]
    points = spec.grid_points()
    for i in free[:max(0, need)]:
        study.enqueue_trial(points[i], user_attrs={GRID_POINT: i, CLAIM: f"grid:{i}"},
                            skip_if_exists=False)


def suggest(trial: optuna.Trial, params: tuple[Param, ...]) -> dict[str, Any]:
    """Sample one configuration: {config key: value}. Constants are suggested too, so they
    are params of the trial like any other (trials.csv, best.*)."""
    out: dict[str, Any] = {}
    for p in params:
        if p.distribution in ("categorical", "constant"):
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


# --- workers, crashes, retries ----------------------------------------------------------


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _age_s(t: FrozenTrial) -> float:
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


def _dead_here(t: FrozenTrial) -> bool:
    """Whether a RUNNING trial's process is gone. A trial that names no worker was left by
    a process killed between creating it and naming itself (milliseconds apart): dead
    once it is older than the grace period, on any storage."""
    worker = t.user_attrs.get("worker", "")
    if not worker:
        return _age_s(t) > GRACE_S
    return not alive(worker)


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
        attrs = {"retry_of": t.number, "retry_reason": kind, "crash_detected_by": how,
                 CLAIM: t.user_attrs.get(CLAIM) or f"retry:{t.number}"}
        if GRID_POINT in t.user_attrs:
            attrs[GRID_POINT] = t.user_attrs[GRID_POINT]
        study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)


def recover(study: optuna.Study, recovery: Recovery, local: bool = True) -> int:
    """Fail the RUNNING trials whose process is gone; returns how many. With `local`
    False (RDB storage, whose heartbeats judge processes) only trials naming no worker."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if (local or not t.user_attrs.get("worker")) and _dead_here(t):
            recovery.lost(study, t, "crashed", "process gone")
            n += 1
    return n


def work(study: optuna.Study, spec: Sweep, objective: Callable[[optuna.Trial], float],
         on_done: Callable[[FrozenTrial], None], recovery: Recovery,
         deadline: float | None = None, poll_s: float = 1.0) -> str:
    """Run trials until the global budget is met ('budget') or the deadline passes
    ('timeout').

    When the trials still running elsewhere would use up the budget, wait for them rather
    than start more: they may fail (a crashed worker) and free their slot for a retry.
    """
    limit = budget(spec)
    me = worker_id()

    def wrapped(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", me)
        faults.point("trial_start")
        refusal = _refusal(study.get_trials(deepcopy=False), trial, spec, limit)
        if refusal:
            trial.set_user_attr(FAIL_KIND, refusal)
            raise Refused(refusal)
        try:
            value = objective(trial)
            faults.point("before_tell")
            return value
        except (Refused, optuna.TrialPruned):
            raise
        except Exception as exc:
            if "fail_reason" not in trial.user_attrs:
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:1000])
            raise
        except KeyboardInterrupt:
            # Optuna itself marks the trial FAIL as the interrupt passes through it.
            with interrupts.shielded():
                recovery.lost(study, latest(study, trial), "interrupted", set_state=False)
            raise

    while deadline is None or time.time() < deadline:
        interrupts.check()
        trials = study.get_trials(deepcopy=False)
        done = sum(counts(t) for t in trials)
        if done >= limit:
            return "budget"
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if done + len(running) >= limit:
            # RDB storage knows dead workers on any machine by their heartbeat; the journal
            # (one machine) by their process.
            if is_journal(study):
                recover(study, recovery)
            else:
                optuna.storages.fail_stale_trials(study)
                recover(study, recovery, local=False)
            time.sleep(poll_s)
            continue
        if spec.method == "grid":
            _top_up_grid(study, spec, trials, limit)
        study.optimize(wrapped, n_trials=1, catch=(Exception,), gc_after_trial=False)
        mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == me]
        if mine and mine[-1].user_attrs.get(FAIL_KIND) not in REFUSALS:
            on_done(mine[-1])
    return "timeout"
