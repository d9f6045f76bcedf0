"""`sweep --dry-run`: the resolved sweep and its first configs, with nothing written.

The configs come from the sweep's own trial loop (`study.work`) on an in-memory study,
with the same samplers, per-trial seeds and grid queue as a real run, so they are the
configs the first trials of a new study train. A model-based method's later draws depend
on results the dry run does not have; it says from which trial on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from experiments.core import config as cfg
from experiments.core import task as tasks
from experiments.search.spec import differences
from experiments.search.spec.pruners import Pruner
from experiments.search.spec.sweepfile import SweepSpec

SAMPLES = 3
# Trials drawn without looking at results, per method (Optuna's defaults): TPE and GP start
# with 10 random trials, CMA-ES with one, W&B's bayes with two.
RESULT_FREE = {"tpe": 10, "gp": 10, "cmaes": 1, "bayes": 2}


SAMPLERS = {"tpe": "Optuna TPESampler (model-based; its first 10 trials are random)",
            "bayes": "W&B's own Bayesian search (the sweeps package's Gaussian process; "
                     "random until two trials have a value)",
            "random": "Optuna RandomSampler", "grid": "every point once, from a queue",
            "cmaes": "Optuna CmaEsSampler", "qmc": "Optuna QMCSampler (Sobol)",
            "gp": "Optuna GPSampler (Gaussian process; PyTorch)"}


def _pruner(spec: SweepSpec) -> Pruner:
    """The pruner as it runs: Hyperband's last rung is the trials' epochs unless given."""
    p = spec.pruner
    if p.type == "hyperband" and not p.max_resource:
        return dataclasses.replace(p, max_resource=spec.max_epochs())
    return p


def describe(spec: SweepSpec, existing: Any = None, changed: list[str] | None = None,
             store: Any = None) -> str:
    """The sweep as understood, and the configs its next trials train: those of a new
    study, or, when `existing` (the study of this name) has trials, the ones it continues
    with (its running trials taken as ended, since their workers cannot be asked)."""
    import optuna

    from experiments.search.spec import space
    from experiments.search.spec.metrics import describe as describe_metrics
    from experiments.search.study import samplers
    from experiments.search.trials.budget import Budget, reached
    from experiments.search.trials.loop import Recovery, work

    modes = spec.all_grad_modes()
    budget = Budget.of(spec)
    lines = [f"sweep '{spec.name}' from {spec.path}: method {spec.method} -> "
             f"{SAMPLERS[spec.method]}; {describe_metrics(spec.metrics)}"
             + (f" (no trial starts once one reaches {spec.target:g})"
                if spec.target is not None else "")
             + f"; budget {budget.limit} trials; pruner {_pruner(spec)}"
             + (f"; timeout {spec.timeout_s:g}s" if spec.timeout_s else "")]
    lines.append(f"MLflow experiment: '{spec.experiment}'"
                 + (" (W&B's project)" if spec.project else " (the sweep's name)"))
    lines += [f"W&B {note}" for note in spec.notes]
    lines += [f"warning: {w}" for w in spec.warnings if w not in spec.notes]
    lines += [f"differs from W&B (docs/wandb.md): {line}" for line in differences.touched(spec)]
    if spec.ablation:
        lines.append("grad modes per trial: " + ", ".join(modes)
                     + ("  (first is the objective)" if len(modes) > 1 else ""))
    else:
        lines.append("grad mode: " + (f"searched over {', '.join(modes)}" if any(
            p.key == "grad_mode" for p in spec.parameters) else modes[0]))
    if spec.repeats > 1:
        lines.append(f"repeats: {spec.repeats} seeds per configuration (the config's seed, "
                     "then seeds derived from the sweep seed); the objective is their mean, "
                     "the pruner watches the first seed")
    lines.append("workers: any number gives the one-worker answer (ordered: true)"
                 if spec.ordered else "workers: each trial sees the trials done when it "
                 "decides (ordered: false): faster, but the answer depends on timing")
    lines.append(f"models kept: {spec.models}" + (
        " (the trials ranked in the top so far when they end)"
        if spec.models.kind == "top_k" and spec.repeats == 1 and not spec.multi else ""))
    if spec.multi:
        lines.append("a trade-off: the answer is the Pareto front of "
                     + describe_metrics(spec.metrics))
    file = tasks.locate(str(spec.fixed.get("task", cfg.Config().task)))
    lines.append(f"task: {file.name} ({file.path}, digest {file.digest})" + (
        "; its keys: " + ", ".join(f"model.{k.name} = {k.default!r} ({k.allowed()})"
                                   for k in file.keys) if file.keys else "")
                 + ("; its own data(config)" if "data" in file.defines else ""))
    lines.append("fixed: " + (", ".join(f"{k}={v}" for k, v in spec.fixed.items()) or "-"))
    lines.append("search space:")
    lines += [f"  {p.key}: {p.describe()}" + (" (sampled as its quantile)" if p.mapped else "")
              for p in spec.parameters]
    configs = []

    def objective(trial: optuna.Trial) -> float:
        values = space.suggest(trial, spec.parameters, spec.method == "grid")
        try:
            config = file.complete(cfg.build({**spec.fixed, **values}))
        except cfg.ConfigError as exc:  # a draw of an unbounded law out of its key's range
            configs.append((trial.number, {**values, "fails its trial": str(exc)}))
            raise
        searched = {p.key for p in spec.parameters}
        configs.append((trial.number, {k: v for k, v in cfg.flatten(config).items()
                                       if not k.startswith("data.") or k in searched}))
        return (0.0,) * len(spec.metrics) if spec.multi else 0.0

    study = optuna.create_study(directions=spec.directions)
    study.sampler = samplers.sampler(spec)
    past = existing.get_trials() if existing is not None else []
    study.add_trials([_ended(t) for t in past])
    if spec.warm_start is not None and store is not None:
        from experiments.search.trials import warm_queue

        warm_queue.enqueue(study, spec, store, lambda line: lines.append(line))
    done = len(budget.finished(study))
    n = 0 if reached(past, spec) else min(SAMPLES, max(0, budget.limit - done))
    ahead = dataclasses.replace(spec, n_trials=done + n, pruner=Pruner("none"), target=None)
    work(study, ahead, Budget.of(ahead), objective, lambda t: None, Recovery())
    free = RESULT_FREE.get(spec.method)
    note = f"; from trial {free} on, draws depend on results" if free is not None and \
        free < len(past) + n else ""
    if past:
        lines.append(f"study '{spec.name}' exists with {len(past)} trials ({done} counted); "
                     f"a rerun continues it" + (f", recording the change: {'; '.join(changed)}"
                                                if changed else ""))
        lines.append(f"the next {len(configs)} configs it trains{note}:" if configs else
                     "a trial reached metric.target: a rerun trains nothing"
                     if reached(past, spec) else
                     "its budget is met: a rerun trains nothing (raise it with --n-trials)")
    else:
        lines.append(f"the first {len(configs)} configs a new study trains{note}:")
    lines += [f"  {number}. " + ", ".join(f"{k}={v}" for k, v in c.items())
              for number, c in configs]
    return "\n".join(lines)


def _ended(t: Any) -> Any:
    """A copy of a stored trial for the in-memory study; a running one as failed."""
    import optuna
    from optuna.trial import TrialState

    if t.state != TrialState.RUNNING:
        return t
    return optuna.trial.create_trial(state=TrialState.FAIL, params=t.params,
                                     distributions=t.distributions, user_attrs=t.user_attrs,
                                     system_attrs=t.system_attrs)
