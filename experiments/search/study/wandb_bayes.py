"""`method: bayes` as W&B runs it: the `sweeps` package's Gaussian-process search, asked
for each trial's point through an Optuna sampler.

Each proposal takes the steps of W&B's `bayes_search_next_run` (fill the metric's defaults,
build the GP's data from the runs, `next_sample`), with the study's trials shown to W&B as
its runs: the values that trained as their config, the reported epochs as their history.
W&B's answer is a quantile per parameter; a parameter Optuna samples natively gets W&B's
value at that quantile, a mapped one (space.py) the quantile itself, so the trial trains
exactly what W&B chose.

W&B draws from numpy's global generator (its random candidates, its subsample of 100 runs,
its random fallback when the kernel fits badly). Each proposal seeds it with the sampler's
seed and puts the caller's state back afterwards: a proposal is a function of (history,
seed), and nothing else that uses numpy's generator is disturbed.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from experiments.search.spec.engine import part
from experiments.search.spec.space import Param, plain, values_of
from experiments.search.study import liveness

# What W&B's engine would call each trial. A pruned trial is W&B's early-terminated run:
# on a hyperband verdict the W&B agent's `_command_stop` sends the run's process SIGTERM,
# then SIGKILL (wandb/wandb, wandb/wandb_agent.py), so the run ends "killed" ("forcibly
# stopped before it could finish", W&B's run-state docs), and `_construct_gp_data` in
# sweeps' bayes_search.py treats killed like failed and crashed: its metric is imputed by
# `metric.impute` (worst by default, else its own best or latest epoch). wandb/sweeps#59
# added `impute` for exactly this: users saw hyperband-stopped runs land as failed or
# crashed and be scored as the sweep's worst.
STATES = {TrialState.COMPLETE: "finished", TrialState.FAIL: "failed",
          TrialState.PRUNED: "killed", TrialState.RUNNING: "running",
          TrialState.WAITING: "pending"}


class WandbBayesError(RuntimeError):
    """W&B's bayes search could not propose a point (its engine refused the history)."""


def _trained(t: FrozenTrial, params: tuple[Param, ...]) -> dict[str, Any] | None:
    """The values trial `t` trains with, by config key; None if one is not known yet (a
    trial still suggesting): W&B never sees a run without its whole config."""
    recorded = values_of(t)
    # An enqueued trial (warm start, retry) names its values by Optuna param until it runs.
    given = {**t.system_attrs.get("fixed_params", {}), **t.params}
    out = {}
    for p in params:
        if p.key in recorded:  # a mapped param's Optuna name is never its key
            out[p.key] = recorded[p.key]
        elif p.optuna_name() in given:
            u = given[p.optuna_name()]
            out[p.key] = p.ppf(u) if p.mapped else u
        elif p.distribution == "constant":
            out[p.key] = p.values[0]
        else:
            return None
    return out


def sweep_runs(trials: list[FrozenTrial], params: tuple[Param, ...], metric: str,
               exclude: int | None = None) -> list[Any]:
    """The study's trials as W&B's SweepRuns: config {key: {"value": v}}, the history one
    {metric: value} per reported epoch in order, then a complete trial's objective value
    when it is not the last epoch's (a mean over repeats)."""
    sweeps = part("sweeps")
    runs = []
    for t in sorted(trials, key=lambda t: t.number):
        # A trial cut short is left out: its retry is the config's result, which would
        # otherwise count twice (once as an imputed worst).
        seen = t.state in STATES and t.number != exclude and not liveness.cut_short(t)
        values = _trained(t, params) if seen else None
        if values is None:
            continue
        history = [{metric: v} for _, v in sorted(t.intermediate_values.items())]
        if t.state == TrialState.COMPLETE and "seeds" in t.user_attrs:
            # With repeats the objective is the mean over seeds, and the epochs reported
            # are the first seed's: W&B, which takes a run's best value, is given the mean.
            history = []
        if t.state == TrialState.COMPLETE and t.values:
            final = t.values[0]
            if not history or history[-1][metric] != final:
                history.append({metric: final})
        runs.append(sweeps.SweepRun(name=str(t.number), state=STATES[t.state], history=history,
                                    config={k: {"value": v} for k, v in values.items()}))
    return runs


def propose(config: dict[str, Any], runs: list[Any], seed: int) -> dict[str, float]:
    """W&B's next point for `runs`: the quantile it chose per searched parameter, under
    numpy's global generator seeded with `seed` (its state is restored afterwards)."""
    bayes = part("sweeps.bayes_search")
    state, muted = np.random.get_state(), logging.root.manager.disable
    logging.disable(logging.WARNING)  # sweeps logs a NaN row (a NaN draw's run) on root
    try:
        np.random.seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's fit and sweeps' own, per call
            filled = bayes.bayes_baseline_validate_and_fill(config)
            hps, sample_x, current_x, y, _ = bayes._construct_gp_data(runs, filled)
            suggested = bayes.next_sample(
                sample_X=sample_x, sample_y=y,
                X_bounds=[[0.0, 1.0]] * len(hps.searchable_params),
                current_X=current_x if len(current_x) > 0 else None)[0]
    except Exception as exc:
        raise WandbBayesError(f"W&B's bayes search (the sweeps package) could not propose a "
                              f"point from {len(runs)} runs: {type(exc).__name__}: {exc}"
                              ) from exc
    finally:
        np.random.set_state(state)
        logging.disable(muted)
    return {name: float(suggested[i]) for name, i in hps.param_names_to_index.items()}


def in_space(p: Param, u: float) -> Any:
    """W&B's quantile `u` for `p` as the Optuna param: u itself for a mapped law, else the
    value W&B's ppf gives (inside Optuna's bounds, which float error can miss by a hair).
    The law is the one W&B's engine was given (Param.engine_law, in the sweep's config)."""
    if p.mapped:
        return u
    value = plain(p.law.ppf(u))
    d = p.optuna_distribution()
    if isinstance(d, CategoricalDistribution):
        return value
    if isinstance(d, IntDistribution):
        return min(max(int(value), d.low), d.high)
    return min(max(float(value), d.low), d.high)


class WandbBayesSampler(optuna.samplers.BaseSampler):
    """W&B's bayes search over the sweep's parameters; anything else is drawn at random."""

    def __init__(self, config: dict[str, Any], params: tuple[Param, ...], seed: int) -> None:
        metric = config.get("metric")
        if not isinstance(metric, dict) or "name" not in metric:
            raise WandbBayesError("W&B's bayes search optimises one metric: the sweep needs "
                                  "metric: {name: ..., goal: ...}")
        self._config = copy.deepcopy(config)
        self._params, self._seed = tuple(params), seed
        self._metric = metric["name"]
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        # Only the fallback: a proposal's seed is the point (one per trial, PerTrialSeed).
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return {p.optuna_name(): p.optuna_distribution() for p in self._params
                if p.distribution != "constant"}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        # `study` may be ordered.Before (the one-worker view): its get_trials is the view.
        trials = study.get_trials(deepcopy=False, states=tuple(STATES))
        runs = sweep_runs(trials, self._params, self._metric, exclude=trial.number)
        chosen = propose(self._config, runs, self._seed)
        return {p.optuna_name(): in_space(p, chosen[p.key])
                for p in self._params
                if p.optuna_name() in search_space and p.key in chosen}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)


__all__ = ["STATES", "WandbBayesError", "WandbBayesSampler", "in_space", "propose",
           "sweep_runs"]
