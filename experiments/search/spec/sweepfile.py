"""Sweep files: W&B's sweep YAML as W&B documents it, plus this runner's own keys, checked
whole before anything runs.

Every W&B key is accepted with W&B's meaning, and W&B's own engine decides what W&B
decides (its schema, laws and grids here; `bayes` and `early_terminate` through study/);
`run_cap` is the budget, `metric.target` a stopping rule, `project` the MLflow
experiment; what does not apply here (`program`, `command`, `entity`, ...) is recorded on
the parent run and said in `--dry-run`. Every mistake is one `SweepError` line naming the
file, the key path and what is allowed. Nothing here imports Optuna, MindSpore or MLflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.core import config as cfg
from experiments.search.spec import models_kept, settings, wandb_schema
from experiments.search.spec.metrics import (
    Objective,
    check_multi,
    describe,
    read_metrics,
    read_repeats,
)
from experiments.search.spec.parameters import parameters
from experiments.search.spec.pruners import Pruner, read_pruner
from experiments.search.spec.reader import Reader, SweepError, read
from experiments.search.spec.settings import MAX_TRIALS, RECORDED_ONLY
from experiments.search.spec.space import BETA_FAMILY, NORMAL_FAMILY, Param
from experiments.search.spec.task_keys import read_task
from experiments.search.spec.warm_start import WarmStart, read_warm_start

METHODS = ("tpe", "bayes", "random", "grid", "cmaes", "qmc", "gp")
WANDB_KEYS = ("program", "command", "entity", "project", "description", "name", "method",
              "metric", "parameters", "early_terminate", "run_cap")
RUNNER_KEYS = ("n_trials", "timeout_s", "seed", "pruner", "fixed", "ablation", "repeats",
               "warm_start", "models", "ordered")
TOP_KEYS = WANDB_KEYS + RUNNER_KEYS + RECORDED_ONLY
REFUSED = {"scheduler": "W&B's custom schedulers (Optuna or Ax engines) are not run here; "
                        "use method and early_terminate",
           "metrics": "a multi-objective sweep lists its metrics under `metric`: "
                      "metric: [{name: ..., goal: ...}, {name: ..., goal: ...}]"}
__all__ = ["MAX_TRIALS", "Param", "Pruner", "SweepError", "SweepSpec", "load"]


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """A sweep file, parsed and checked: what to search, how, and for how long."""

    path: str
    name: str
    method: str = "tpe"
    metric: str = "test_accuracy"
    goal: str = "maximize"
    n_trials: int = 10
    timeout_s: float | None = None
    seed: int = 0
    pruner: Pruner = field(default_factory=Pruner)
    fixed: dict[str, Any] = field(default_factory=dict)
    parameters: tuple[Param, ...] = ()
    ablation: tuple[str, ...] = ()
    target: float | None = None  # metric.target: no trial starts once one reached it
    project: str | None = None  # the MLflow experiment, when not the sweep's name
    recorded: tuple[tuple[str, str], ...] = ()  # W&B keys kept on the parent run as text
    notes: tuple[str, ...] = ()  # how the file's W&B keys were understood
    repeats: int = 1  # seeds per configuration; the objective is their mean
    warm_start: WarmStart | None = None
    objectives: tuple[Objective, ...] = ()  # (metric, goal) each; () is (metric, goal)
    models: models_kept.Models = field(default_factory=models_kept.Models)  # what is saved
    ordered: bool = True  # workers give the one-worker answer (ordered.py), or go faster
    # A task file's content: another file under the same name asks another question.
    task_digest: str = ""
    # The file's W&B keys W&B's engine decides on (method, metric, early_terminate), as
    # written; wandb_config() adds the parameters.
    engine: dict[str, Any] = field(default_factory=dict, compare=False)
    warnings: tuple[str, ...] = ()  # W&B's deprecation notes: said when the sweep starts

    @property
    def metrics(self) -> tuple[Objective, ...]:
        """Every (metric, goal) the sweep optimises; the first is `metric`, `goal`."""
        return self.objectives or ((self.metric, self.goal),)

    @property
    def multi(self) -> bool:
        """A trade-off: several objectives, a Pareto front rather than one best trial."""
        return len(self.metrics) > 1

    @property
    def directions(self) -> list[str]:
        return [goal for _, goal in self.metrics]

    @property
    def experiment(self) -> str:
        """The MLflow experiment of the sweep's runs: W&B's `project`, or the name."""
        return self.project or self.name

    @property
    def warmup_epochs(self) -> int:
        return self.pruner.warmup_epochs

    def grad_modes(self, grad_mode: str) -> tuple[str, ...]:
        """What a trial whose config says `grad_mode` trains: the ablation's modes (the
        objective's first), or that one mode (fixed, searched or the default)."""
        return self.ablation or (grad_mode,)

    def all_grad_modes(self) -> list[str]:
        """Every grad mode the sweep trains: ablated, searched or fixed."""
        searched = [p for p in self.parameters if p.key == "grad_mode"]
        if self.ablation or not searched:
            return list(self.grad_modes(self.fixed.get("grad_mode", cfg.Config().grad_mode)))
        return list(searched[0].values)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point of a grid, in the order the sweep visits them: shuffled by the seed,
        so that a budget below the grid's size still spreads over the grid."""
        points = [dict(zip([p.key for p in self.parameters], values, strict=True))
                  for values in itertools.product(*(p.grid_values() for p in self.parameters))]
        order = random.Random(self.seed).sample(range(len(points)), len(points))
        return [points[i] for i in order]

    def max_epochs(self) -> int:
        """The most epochs a trial trains: fixed, the top of a searched range, or 3."""
        searched = [p for p in self.parameters if p.key == "epochs"]
        if not searched:
            return cfg.build(self.fixed).epochs
        p = searched[0]
        if p.distribution in ("categorical", "constant"):
            return max(p.values)
        return int(p.support()[1]) if p.support()[1] < float("inf") else 10_000

    def meaning(self) -> dict[str, Any]:
        """What the sweep asks: a study answers one such question. The budget (n_trials,
        run_cap, timeout_s, target), the seed and the pruner say how long and how, not what.

        `fixed` is every config value a trial does not search, defaults included, so that
        writing a default out (`--set data.path=MNIST_Data`) asks the same question; the
        evaluation batch size (speed) and the device (where) are left out.
        """
        searched = {p.key for p in self.parameters} | ({"grad_mode"} if self.ablation else set())
        config = cfg.question(cfg.build(self.fixed))
        fixed = {k: v for k, v in config.items() if k not in searched
                 and k != "data.eval_batch_size" and k not in cfg.PLACEMENT_KEYS}
        out = {"method": self.method, "metric": describe(self.metrics),
               "fixed": fixed, "parameters": {p.key: p.describe() for p in self.parameters},
               "ablation": list(self.ablation)}
        if self.experiment != self.name:
            out["experiment"] = self.experiment
        if self.repeats > 1:  # the objective is a mean over seeds: another question
            out["repeats"] = self.repeats
        if self.task_digest:
            out["task_digest"] = self.task_digest
        if self.method == "bayes":  # W&B's own search since the engine came: not Optuna's TPE
            out["sampler"] = "W&B's bayes (the sweeps package)"
        points = {p.key: list(p.grid_values()) for p in self.parameters
                  if self.method == "grid" and p.distribution == "q_uniform"}
        floats = {k: v for k, v in points.items() if not all(isinstance(x, int) for x in v)}
        if floats:  # W&B's arange points (0.15000000000000002), no longer rounded (0.15)
            out["grid_points"] = floats
        return out

    def wandb_config(self) -> dict[str, Any]:
        """The sweep as W&B's engine (the `sweeps` package) reads it: the file's method,
        metric and early_terminate, and every searched key's law under its dotted name."""
        metric = self.engine.get("metric")
        if not isinstance(metric, dict):  # none given (W&B's default), or a trade-off's list
            metric = {"name": self.metric, "goal": self.goal}
        return {**self.engine, "method": self.method, "metric": {**metric, "goal": self.goal},
                "parameters": {p.key: p.engine_law for p in self.parameters}}

    def fingerprint(self) -> str:
        text = json.dumps(self.meaning(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read and check a sweep file; `overrides` (from --set) are merged into `fixed`."""
    path = str(path)
    r = Reader(path)
    raw = r.mapping(read(path), "(top level)")
    # Each part is checked on its own, with a stand-in when it is wrong, so that every
    # mistake of the file is told in one go (three mistakes took three runs).
    for key, why in REFUSED.items():
        if key in raw:
            with r.each():
                raise r.fail(key, why)
    with r.each():  # a refused key is told why above, not as unknown
        r.known({k: v for k, v in raw.items() if k not in REFUSED}, "", TOP_KEYS)
    if "parameters" not in raw:
        with r.each():
            raise r.fail("parameters", "missing; a sweep needs parameters to search")
    name = raw.get("name", Path(path).stem)
    if not cfg.valid_name(name):
        given = "" if "name" in raw else " (the file's name: the file gives no `name`)"
        with r.each():
            raise r.fail("name", f"got {cfg.show(name)}{given}; allowed: {cfg.NAME_RULE}")
        name = "sweep"
    method, notes = "tpe", []
    with r.each():
        method = r.choice(raw.get("method", "tpe"), "method", METHODS)
    metrics, target = (("test_accuracy", "maximize"),), None
    with r.each():
        metrics, target = read_metrics(r, raw, notes)
        check_multi(r, raw, metrics, method)
    n_trials = 10
    with r.each():
        n_trials = settings.budget(r, raw, notes)
    timeout = raw.get("timeout_s")
    with r.each():
        if timeout is not None and r.number(timeout, "timeout_s") <= 0:
            raise r.fail("timeout_s", f"expected a number of seconds > 0, got "
                                      f"{cfg.show(timeout)}")
    seed = 0
    with r.each():
        seed = r.integer(raw.get("seed", 0), "seed", 0, 2**32 - 1)
    fixed = {}
    with r.each():
        for key, value in r.mapping(raw.get("fixed") or {}, "fixed").items():
            with r.each():
                r.config_key(f"fixed.{key}", key)
                fixed[key] = r.config_value(f"fixed.{key}", key, value)
    for key, value in (overrides or {}).items():
        fixed[key] = cfg.coerce(key, value)
    params: tuple[Param, ...] = ()
    with r.each():
        if "parameters" in raw:  # missing: said above
            params = parameters(r, r.mapping(raw["parameters"], "parameters"), fixed, method)
    task = read_task(r, fixed, params)
    ablation: tuple[str, ...] = ()
    with r.each():
        ablation = settings.ablation(r, raw.get("ablation"), fixed, params)
    pruner = Pruner("none")
    with r.each():
        pruner = read_pruner(r, raw, notes)  # checked whole in any case
    if len(metrics) > 1:  # a trade-off is never pruned (check_multi refused one)
        pruner = Pruner("none")
    repeats, warm, project, recorded = 1, None, None, ()
    with r.each():
        repeats = read_repeats(r, raw, {p.key for p in params})
    with r.each():
        warm = read_warm_start(r, raw.get("warm_start"), name, method, read)
    if method == "gp":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            with r.each():
                raise r.fail("method", "gp needs PyTorch (pip install torch==2.13.0); "
                                       "allowed without it: tpe, bayes, random, grid, cmaes, qmc")
    if "project" in raw:
        with r.each():
            project = r.text(raw["project"], "project")
            cfg.check_text(project, f"{path}: project")
    with r.each():
        recorded = settings.recorded(r, raw, notes)
    models, ordered = None, True
    with r.each():
        models = models_kept.read(r, raw.get("models"))
    with r.each():
        ordered = settings.ordered(r, raw)
    # W&B's schema decides on the file's W&B part. Told last, so that a key this runner
    # told about already keeps its own line; W&B's deprecation notes join the notes.
    deprecated: list[str] = []
    wandb_schema.tell(r, raw, RUNNER_KEYS, deprecated)
    notes += deprecated
    r.check()
    (metric, goal) = metrics[0]
    spec = SweepSpec(path=path, name=name, method=method, metric=metric, goal=goal,
                     n_trials=n_trials, timeout_s=None if timeout is None else float(timeout),
                     seed=seed, pruner=pruner, fixed=fixed, parameters=params,
                     ablation=ablation, target=target, project=project, recorded=recorded,
                     notes=tuple(notes), repeats=repeats, warm_start=warm,
                     objectives=metrics if len(metrics) > 1 else (),
                     models=models, ordered=ordered,
                     task_digest="" if task is None or task.name in cfg.BUILT_IN_TASKS
                     else task.digest,
                     engine={k: raw[k] for k in ("metric", "early_terminate") if k in raw},
                     warnings=tuple(deprecated))
    return dataclasses.replace(spec, warnings=spec.warnings + tuple(_futile(spec)))


def _futile(spec: SweepSpec) -> list[str]:
    """What the file asks that W&B's engine accepts but that can never do anything: a law
    whose every draw is NaN, an early_terminate whose first band is never reached."""
    out = []
    for p in spec.parameters:
        if (p.distribution in NORMAL_FAMILY and p.sigma == 0) or (
                p.distribution in BETA_FAMILY and 0 in (p.a, p.b)):
            out.append(f"parameters.{p.key}: {p.describe()}: W&B's own engine draws NaN for "
                       "every trial of it (SciPy's ppf with a zero parameter), so every "
                       "trial fails")
    first, epochs = spec.pruner.bands[:1], spec.max_epochs()
    if spec.pruner.source == "early_terminate" and first and first[0] >= epochs:
        out.append(f"early_terminate: its first band is epoch {first[0]}, and a trial trains "
                   f"at most {epochs} epochs: no trial is stopped early")
    return out
