"""Queueing a warm start: the earlier study's best trials that fit this sweep's space.

The earlier study is looked up before anything is written (`check`); `enqueue` queues its
best complete trials (the Pareto front first, for a trade-off) once each, with a claim,
and names each one that does not fit in one line.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from experiments.core import config as cfg
from experiments.search.spec.space import values_of
from experiments.search.spec.sweepfile import SweepError, SweepSpec
from experiments.search.spec.warm_start import FROM_ATTR
from experiments.search.study.study import MEANING
from experiments.search.trials.budget import CLAIM


def check(spec: SweepSpec, store: Any, url: str) -> None:
    """The earlier study must be in this storage (SweepError before anything is written)."""
    if spec.warm_start is None:
        return
    names = [] if store is None else optuna.get_all_study_names(store)
    if spec.warm_start.source not in names:
        others = ", ".join(n for n in names if n != spec.name) or "none"
        raise SweepError(f"{spec.path}: warm_start.from: no study '{spec.warm_start.source}' "
                         f"in {url}; studies there: {others}")


def enqueue(study: optuna.Study, spec: SweepSpec, store: Any, say: Any) -> int:
    """Queue the earlier study's best trials that fit this sweep; returns how many."""
    ws = spec.warm_start
    earlier = optuna.load_study(study_name=ws.source, storage=store)
    done = [t for t in earlier.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(earlier.directions) > 1:
        front = {t.number for t in earlier.best_trials}
        done.sort(key=lambda t: t.number not in front)  # the Pareto front first
    else:
        done.sort(key=lambda t: t.value,
                  reverse=earlier.direction == optuna.study.StudyDirection.MAXIMIZE)
    queued = {t.user_attrs.get(FROM_ATTR) for t in study.get_trials(deepcopy=False)}
    meaning = earlier.user_attrs.get(MEANING) or {}
    fixed, laws = meaning.get("fixed", {}), meaning.get("parameters", {})
    n = 0
    for t in done[:ws.top]:
        origin = f"{ws.source}#{t.number}"
        if origin in queued:
            continue
        params, why = _fit(spec, {**fixed, **values_of(t)}, t, laws)
        if why:
            say(f"warm start: trial {t.number} of '{ws.source}' skipped: {why}")
            continue
        study.enqueue_trial(params, user_attrs={FROM_ATTR: origin, CLAIM: f"warm:{origin}"},
                            skip_if_exists=False)
        n += 1
    if n:
        say(f"warm start: {n} configuration(s) of '{ws.source}' queued first")
    return n


def _fit(spec: SweepSpec, config: dict[str, Any], t: Any, laws: dict[str, str]
         ) -> tuple[dict[str, Any], str]:
    """This sweep's Optuna params for an earlier trial's config, or why it does not fit.
    `laws` are the earlier sweep's parameters, in words (its meaning)."""
    params: dict[str, Any] = {}
    config = {**cfg.flatten(cfg.Config()), **config}  # a study from before meanings
    for p in spec.parameters:
        value = config.get(p.key)
        if p.mapped:
            # Drawn through its quantile: every such law is Optuna's FloatDistribution(0,
            # 1), so only the same law (in words) turns the same quantile into the value.
            if laws.get(p.key) != p.describe() or p.optuna_name() not in t.params:
                return {}, (f"parameters.{p.key} is drawn through its quantile, from another "
                            "law than the earlier sweep's: its value cannot be placed")
            params[p.optuna_name()] = t.params[p.optuna_name()]
            continue
        if not _inside(p, value):
            return {}, f"{p.key}={value} is outside parameters.{p.key} ({p.describe()})"
        params[p.key] = value
    return params, ""


def _inside(p: Any, value: Any) -> bool:
    d = p.optuna_distribution()
    if hasattr(d, "choices"):  # equal, and True is not the choice 1
        return any(c == value and isinstance(c, bool) == isinstance(value, bool)
                   for c in d.choices)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if p.distribution == "int_uniform" and value != int(value):
        return False
    return d.low <= value <= d.high
