"""The Optuna study and the question it answers (its storage is opened by storage.py, its
samplers and pruner chosen by samplers.py).

A study answers one question: its sweep's meaning (space, method, metric and goal, fixed,
ablation) is recorded on it, and a sweep file that asks another is refused.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import optuna

from experiments.runtime.retry import retry
from experiments.search.spec.metrics import describe
from experiments.search.spec.sweepfile import SweepError, SweepSpec
from experiments.search.study import samplers
from experiments.search.study.storage import unusable

MEANING, FINGERPRINT = "sweep.meaning", "sweep.fingerprint"  # study user attrs
N_TRIALS = "sweep.n_trials"  # the budget the sweep last ran with (for `status`)


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
    if old.get("task_digest", "") != new.get("task_digest", ""):  # a user's task file
        out.append(f"task file: digest {old.get('task_digest') or '(none)'} -> "
                   f"{new.get('task_digest') or '(none)'}")
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
        raise SweepError(f"{spec.path}: study '{spec.name}' ({n} trials) was last run from "
                         f"another sweep file: {what}; give the sweep a new `name`, or rerun with "
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
    study.sampler = samplers.sampler(spec)
    study.pruner = samplers.pruner(spec)
    return study


