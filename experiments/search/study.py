"""The Optuna study: its samplers and pruner, and the question it answers (its storage is
opened by storage.py).

A study answers one question: its sweep's meaning (space, method, metric and goal, fixed,
ablation) is recorded on it, and a sweep file that asks another is refused.
Every use of Optuna's private API is in this module.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments.runtime.retry import retry
from experiments.search import ordered
from experiments.search.objectives import describe
from experiments.search.storage import unusable
from experiments.search.sweepfile import SweepError, SweepSpec

MEANING, FINGERPRINT = "sweep.meaning", "sweep.fingerprint"  # study user attrs
N_TRIALS = "sweep.n_trials"  # the budget the sweep last ran with (for `status`)


def latest(study: optuna.Study, t: FrozenTrial | optuna.Trial) -> FrozenTrial:
    """The trial as the storage has it now."""
    return study._storage.get_trial(t._trial_id)


def is_journal(study: optuna.Study) -> bool:
    # Optuna wraps an RDBStorage in a cache, so an isinstance test for RDBStorage is always
    # false; the journal is not wrapped.
    return isinstance(study._storage, optuna.storages.JournalStorage)


def heartbeat_ages(study: optuna.Study) -> dict[int, float]:
    """Seconds since each RUNNING trial's last heartbeat, by trial number (RDB storage with
    heartbeats; empty for the journal, which has none). Read from Optuna's own table."""
    backend = getattr(study._storage, "_backend", study._storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        return {}
    import sqlalchemy
    from optuna.storages._rdb import models

    ages = {}
    with backend.scoped_session() as session:
        now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
        rows = (session.query(models.TrialModel.number, models.TrialHeartbeatModel.heartbeat)
                .join(models.TrialHeartbeatModel)
                .filter(models.TrialModel.study_id == study._study_id)
                .filter(models.TrialModel.state == TrialState.RUNNING).all())
        for number, beat in rows:
            ages[number] = (now - beat.replace(tzinfo=None)).total_seconds()
    return ages


def native_heartbeat(study: optuna.Study) -> bool:
    """Whether the storage keeps Optuna's own heartbeats (RDB storage, wrapped in a cache).
    Optuna's gRPC proxy does not pass them on, so its workers beat through `beat`."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    return isinstance(study._storage, BaseHeartbeat) and is_heartbeat_enabled(study._storage)


BEAT = "runner.beat"  # trial system attr: the worker's last sign of life (epoch seconds)


def beat(study: optuna.Study, t: FrozenTrial | optuna.Trial) -> None:
    """Record that the worker of running trial `t` is alive."""
    import time

    study._storage.set_trial_system_attr(t._trial_id, BEAT, time.time())


def _engine(study: optuna.Study) -> Any:
    storage = study._storage  # an RDB storage is wrapped in Optuna's cache
    return getattr(getattr(storage, "_backend", storage), "engine", None)


def forkable(study: optuna.Study) -> bool:
    """Whether a fork of this process may open the study's storage again: the journal (a
    file) or an RDB; not Optuna's gRPC proxy (its channels cannot cross a fork)."""
    return isinstance(study._storage, optuna.storages.JournalStorage) or \
        _engine(study) is not None


def before_fork(study: optuna.Study) -> None:
    """Close the storage's pooled connections: no fork may share one."""
    if _engine(study) is not None:
        _engine(study).dispose()


def after_fork(study: optuna.Study) -> None:
    """In the fork: let go of the inherited pool without closing what the parent uses."""
    if _engine(study) is not None:
        _engine(study).dispose(close=False)


def set_attr(study: optuna.Study, t: FrozenTrial, key: str, value: Any) -> None:
    """A user attr on any trial of the study (an Optuna `Trial` is only the running one)."""
    study._storage.set_trial_user_attr(t._trial_id, key, value)


def set_failed(study: optuna.Study, t: FrozenTrial) -> None:
    """Fail a trial; UpdateFinishedTrialError when someone finished it first."""
    study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


# --- samplers and pruners ---------------------------------------------------------------


def trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


TPE_STARTUP = 10  # Optuna's default: TPE's first 10 trials are random draws


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
        return samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP)
    # random, and grid: a grid trial's params come from the queue (see `_top_up_grid`).
    return samplers.RandomSampler(seed=seed)


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler made afresh for each trial, seeded by (sweep seed, trial number).

    Trial numbers are unique across workers and resumes, so parallel or resumed workers
    never replay one another's draws, one worker is reproducible, and `--dry-run` shows
    exactly the draws the run makes. The inner sampler sees the whole trial, from
    `before_trial` to `after_trial`, with one seed.
    """

    def __init__(self, method: str, seed: int, ordered: bool = True) -> None:
        self._method, self._seed, self._ordered = method, seed, ordered
        self._number: int | None = None
        self._waited: int | None = None
        self._inner = _make_sampler(method, seed)

    def _for(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number != self._number:
            self._number = trial.number
            self._inner = _make_sampler(self._method, trial_seed(self._seed, trial.number))
        return self._inner

    def _seen(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        """The study as the one-worker run shows it to trial k (ordered.py): the earlier
        trials, awaited unless the draw cannot depend on them."""
        if not self._ordered:  # `ordered: false`: whatever is done when it is drawn
            return study
        free = self._method in ("random", "grid") or (
            self._method == "tpe" and trial.number < TPE_STARTUP)
        if not free and self._waited != trial.number:
            ordered.wait_for_earlier(study, trial, _unordered)
            self._waited = trial.number
        return ordered.Before(study, trial.number)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict:
        return self._for(trial).infer_relative_search_space(self._seen(study, trial), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict
                        ) -> dict[str, Any]:
        return self._for(trial).sample_relative(self._seen(study, trial), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return self._for(trial).sample_independent(self._seen(study, trial), trial,
                                                   param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self._for(trial).after_trial(study, trial, state, values)


def _unordered(study: optuna.Study, t: FrozenTrial) -> None:
    study._storage.set_trial_user_attr(t._trial_id, ordered.ORDERED_ATTR, False)


def sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    # QMC indexes its sequence by trial number already and must keep one seed.
    if spec.sampler == "qmc":
        return _make_sampler("qmc", spec.seed)
    return PerTrialSeed(spec.sampler, spec.seed, spec.ordered)


def pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.type == "median":
        median = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=p.warmup_epochs)
        return ordered.OrderedPruner(median, _unordered) if spec.ordered else median
    if p.type == "hyperband":
        # W&B's max_iter, or the most epochs a trial trains (Optuna's "auto" would guess it
        # from the first trial to finish, which a pruned sweep may not have yet).
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource, max_resource=p.max_resource or spec.max_epochs(),
            reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


# --- one study, one question ------------------------------------------------------------


def changes(spec: SweepSpec, study: optuna.Study) -> list[str]:
    """What the sweep file asks that the study was not created for: 'part: old -> new'."""
    out = []
    goals = [d.name.lower() for d in study.directions]
    old = study.user_attrs.get(MEANING) or {}
    now = describe(spec.metrics)
    if goals != spec.directions or old.get("metric", now) != now:
        out.append(f"metric: {old.get('metric', ', '.join(goals))} -> {now}")
    if not old:
        return out  # a study from before fingerprints: only its direction is known
    if old.get("experiment", spec.name) != spec.experiment:
        out.append(f"project: {old.get('experiment', spec.name)} -> {spec.experiment}")
    new = spec.meaning()
    for part in ("method", "ablation"):
        if old.get(part) != new[part]:
            out.append(f"{part}: {old.get(part)} -> {new[part]}")
    if old.get("repeats", 1) != new.get("repeats", 1):  # recorded only above one
        out.append(f"repeats: {old.get('repeats', 1)} -> {new.get('repeats', 1)}")
    for part in ("fixed", "parameters"):
        was, now = old.get(part, {}), new[part]
        for key in sorted(set(was) | set(now)):
            if was.get(key) != now.get(key):
                out.append(f"{part}.{key}: {was.get(key, '(none)')} -> {now.get(key, '(none)')}")
    return out


def check(spec: SweepSpec, store: Any, url: str, allow_change: bool = False) -> list[str]:
    """The changes between the sweep file and the study of its name, if one exists.

    Raises SweepError (before anything is written) when the file asks another question;
    returns the changes that `allow_change` lets through, to be recorded.
    """
    try:
        study = optuna.load_study(study_name=spec.name, storage=store)
    except KeyError:
        return []
    except Exception as exc:  # a journal that is not one, a database that went away
        raise unusable(url, exc) from None
    changed = changes(spec, study)
    if not changed:
        return []
    n = len(study.get_trials(deepcopy=False))
    what = "; ".join(changed)
    if changed[0].startswith("metric:"):
        raise SweepError(f"{spec.path}: study '{spec.name}' ({n} trials) optimises another "
                         f"objective ({what}); an Optuna study keeps one metric and "
                         "direction: give the sweep a new `name`")
    if changed[0].startswith("project:"):
        raise SweepError(f"{spec.path}: study '{spec.name}' ({n} trials) keeps its runs in "
                         f"another MLflow experiment ({what}); a sweep's runs stay in one: "
                         "give the sweep a new `name`")
    if not allow_change:
        raise SweepError(f"{spec.path}: study '{spec.name}' ({n} trials) was created for "
                         f"another sweep: {what}; give the sweep a new `name`, or rerun with "
                         "--allow-change to continue it and record the change on its parent run")
    clash = _clash(spec, study)
    if clash:
        raise SweepError(f"{spec.path}: {clash}; an Optuna study cannot change a parameter's "
                         "values, type or scale in place (its ranges, yes): give the sweep a "
                         "new `name`")
    return changed


def _clash(spec: SweepSpec, study: optuna.Study) -> str:
    """The first parameter whose new law Optuna would refuse beside the study's trials
    (it raises at the trial's first suggestion, so every later trial would fail)."""
    grid = spec.method == "grid"
    for p in spec.parameters:
        new = p.optuna_distribution(grid)
        for t in study.get_trials(deepcopy=False):
            old = t.distributions.get(p.optuna_name(grid))
            if old is None:
                continue
            try:
                optuna.distributions.check_distribution_compatibility(old, new)
            except ValueError as exc:
                return f"parameters.{p.key}: {str(exc).rstrip('.')}"
    return ""


def existing(spec: SweepSpec, store: Any) -> optuna.Study | None:
    """The study of this sweep's name, if the storage has one."""
    try:
        return optuna.load_study(study_name=spec.name, storage=store)
    except KeyError:
        return None


def budget_of(spec: SweepSpec, study: optuna.Study, given: int | None) -> SweepSpec:
    """The spec with the budget the sweep last ran with (`--n-trials` may have changed the
    file's), unless one is given now."""
    n = given or study.user_attrs.get(N_TRIALS)
    return dataclasses.replace(spec, n_trials=int(n)) if n else spec


def open_study(spec: SweepSpec, store: Any) -> optuna.Study:
    """Load or create the study for `spec` (checked by `check` first), recording what it
    asks (its meaning and fingerprint) on it."""
    study = retry(lambda: optuna.create_study(study_name=spec.name, storage=store,
                                              load_if_exists=True,
                                              directions=spec.directions))
    if study.user_attrs.get(FINGERPRINT) != spec.fingerprint():
        study.set_user_attr(MEANING, spec.meaning())
        study.set_user_attr(FINGERPRINT, spec.fingerprint())
    if study.user_attrs.get(N_TRIALS) != spec.n_trials:  # the budget it last ran with
        study.set_user_attr(N_TRIALS, spec.n_trials)
    names = [name for name, _ in spec.metrics]
    if spec.multi and study.metric_names != names:  # the Pareto plot's axes
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2; nothing to act on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    study.sampler = sampler(spec)
    study.pruner = pruner(spec)
    return study


