"""How the study decides: a sampler per method, seeded per trial, and the pruner; both see
the study as the one-worker run would (ordered.py) unless the sweep says `ordered: false`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments.search.spec.sweepfile import SweepSpec
from experiments.search.study import (
    internals,
    liveness,
    ordered,
    wandb_bayes,
    wandb_hyperband,
)

# Whose trial is alive, and how the dead ones elsewhere are failed: liveness.py's judgement,
# handed to every wait.
JUDGE = ordered.Judge(alive=liveness.still_running, sweep=liveness.fail_stale,
                      unordered=internals.mark_unordered)


def trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


TPE_STARTUP = 10  # Optuna's default: TPE's first 10 trials are random draws


# W&B's bayes proposes a random point until two trials have a value (its next_sample).
BAYES_STARTUP = 2


def _make_sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        # QMC and GP are marked experimental; the warning says nothing the user can act on.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _new_sampler(spec, seed)


def _new_sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    samplers, method = optuna.samplers, spec.method
    if method == "bayes":  # W&B's own Gaussian-process search (wandb_bayes.py)
        return wandb_bayes.WandbBayesSampler(spec.wandb_config(), spec.parameters, seed)
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

    def __init__(self, spec: SweepSpec) -> None:
        self._spec, self._method = spec, spec.method
        self._seed, self._ordered = spec.seed, spec.ordered
        self._number: int | None = None
        self._waited: int | None = None
        self._inner = _make_sampler(spec, spec.seed)

    def _for(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number != self._number:
            self._number = trial.number
            self._inner = _make_sampler(self._spec, trial_seed(self._seed, trial.number))
        return self._inner

    def _seen(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        """The study as the one-worker run shows it to trial k (ordered.py): the earlier
        trials, awaited unless the draw cannot depend on them."""
        if not self._ordered:  # `ordered: false`: whatever is done when it is drawn
            return study
        free = self._method in ("random", "grid") or (
            self._method == "tpe" and trial.number < TPE_STARTUP) or (
            self._method == "bayes" and trial.number < BAYES_STARTUP)
        if not free and self._waited != trial.number:
            ordered.wait_for_earlier(study, trial, JUDGE)
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


def sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    # QMC indexes its sequence by trial number already and must keep one seed.
    if spec.method == "qmc":
        return _make_sampler(spec, spec.seed)
    return PerTrialSeed(spec)


def pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.type == "median":
        median = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=p.warmup_epochs)
        return ordered.OrderedPruner(median, JUDGE) if spec.ordered else median
    if p.type == "hyperband" and p.source == "early_terminate":
        # W&B's own rule decides; like the median rule it sees the earlier trials only.
        rule = wandb_hyperband.WandbHyperband(p, spec.goal)
        return ordered.OrderedPruner(rule, JUDGE) if spec.ordered else rule
    if p.type == "hyperband":
        # This runner's `pruner: {type: hyperband}`: its rungs end at the most epochs a
        # trial trains (Optuna's "auto" would guess that from the first trial to finish,
        # which a pruned sweep may not have yet).
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource, max_resource=p.max_resource or spec.max_epochs(),
            reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


