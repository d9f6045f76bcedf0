"""Sweep files: W&B-style YAML, checked whole before anything runs.

Every mistake becomes one `SweepError` line naming the file, the key path and what is
allowed. Nothing here imports Optuna, MindSpore or MLflow: validation is instant.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from experiments.core import config as cfg

METHODS = ("tpe", "random", "grid", "cmaes", "qmc", "gp")
METRICS = ("test_accuracy", "test_loss", "train_loss")
GOALS = ("maximize", "minimize")
PRUNERS = ("median", "hyperband", "none")
DISTRIBUTIONS = ("constant", "categorical", "uniform", "int_uniform", "log_uniform_values",
                 "q_uniform")
TOP_KEYS = ("name", "method", "metric", "n_trials", "timeout_s", "seed", "pruner", "fixed",
            "parameters", "ablation", "description")


MAX_TRIALS = 100_000


class SweepError(cfg.UserError):
    """A bad sweep file; the message is one line."""




@dataclass(frozen=True)
class Param:
    key: str
    distribution: str
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0
    q: float = 0.0


@dataclass(frozen=True)
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
    pruner: str = "median"
    warmup_epochs: int = 1
    fixed: dict[str, Any] = field(default_factory=dict)
    parameters: tuple[Param, ...] = ()
    ablation: tuple[str, ...] = ()

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
                  for values in itertools.product(*(p.values for p in self.parameters))]
        order = random.Random(self.seed).sample(range(len(points)), len(points))
        return [points[i] for i in order]

    def meaning(self) -> dict[str, Any]:
        """What the sweep asks: a study answers one such question. The budget (n_trials,
        timeout_s), the seed and the pruner say how long and how, not what.

        `fixed` is every config value a trial does not search, defaults included, so that
        writing a default out (`--set data.path=MNIST_Data`) asks the same question; the
        evaluation batch size changes no result, only speed, and is left out.
        """
        searched = {p.key for p in self.parameters} | ({"grad_mode"} if self.ablation else set())
        config = cfg.flatten(cfg.build(self.fixed))
        fixed = {k: v for k, v in config.items()
                 if k not in searched and k != "data.eval_batch_size"}
        return {"method": self.method, "metric": f"{self.goal} {self.metric}",
                "fixed": fixed, "parameters": {p.key: _describe(p) for p in self.parameters},
                "ablation": list(self.ablation)}

    def fingerprint(self) -> str:
        text = json.dumps(self.meaning(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _describe(p: Param) -> str:
    if p.distribution in ("categorical", "constant"):
        return f"{p.distribution} {list(p.values)}"
    step = f" step {p.q}" if p.q else ""
    return f"{p.distribution} [{p.low}, {p.high}]{step}"


class _Reader:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> SweepError:
        return SweepError(cfg.one_line(f"{self.path}: {key}: {problem}"))

    def mapping(self, value: Any, key: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {cfg.show(value)}")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(key, f"keys must be strings, got {cfg.show(k)}")
        return value

    def known(self, value: dict, key: str, allowed: tuple[str, ...]) -> None:
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                raise self.fail(where, f"unknown key; allowed: {', '.join(allowed)}")

    def choice(self, value: Any, key: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.fail(key, f"got {cfg.show(value)}; allowed: {', '.join(allowed)}")
        return value

    def integer(self, value: Any, key: str, low: int, high: int = 10**9) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"expected an integer from {low} to {high}, "
                                 f"got {cfg.show(value)}")
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise self.fail(key, f"expected a finite number, got {cfg.show(value)}")
        return value

    def config_value(self, key: str, config_key: str, value: Any) -> Any:
        try:
            return cfg.coerce(config_key, value)
        except cfg.ConfigError:
            raise self.fail(key, f"got {cfg.show(value)}; {config_key} takes "
                                 f"{cfg.allowed(config_key)}") from None

    def config_key(self, key: str, config_key: str) -> None:
        if config_key not in cfg.KEYS:
            raise self.fail(key, f"unknown config key; known: {', '.join(cfg.KEYS)}")


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read and check a sweep file; `overrides` (from --set) are merged into `fixed`."""
    path = str(path)
    r = _Reader(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise SweepError(cfg.one_line(f"{path}: cannot read: {reason}")) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise SweepError(cfg.one_line(f"{path}: malformed YAML{where}: {problem}")) from None
    except ValueError:  # PyYAML's int() of a number of over 4,300 digits
        raise SweepError(f"{path}: malformed YAML: a number of over 4,300 digits") from None
    raw = r.mapping(raw, "(top level)")
    r.known(raw, "", TOP_KEYS)
    for required in ("name", "parameters"):
        if required not in raw:
            raise r.fail(required, "missing; a sweep needs a name and parameters")
    name = raw["name"]
    if not isinstance(name, str) or not cfg.NAME_RE.match(name):
        raise r.fail("name", f"got {cfg.show(name)}; allowed: {cfg.NAME_RULE}")
    method = r.choice(raw.get("method", "tpe"), "method", METHODS)
    metric = r.mapping(raw.get("metric", {"name": "test_accuracy", "goal": "maximize"}),
                       "metric")
    r.known(metric, "metric", ("name", "goal"))
    metric_name = r.choice(metric.get("name", "test_accuracy"), "metric.name", METRICS)
    default_goal = "maximize" if metric_name == "test_accuracy" else "minimize"
    goal = r.choice(metric.get("goal", default_goal), "metric.goal", GOALS)
    n_trials = r.integer(raw.get("n_trials", 10), "n_trials", 1, MAX_TRIALS)
    timeout = raw.get("timeout_s")
    if timeout is not None and r.number(timeout, "timeout_s") <= 0:
        raise r.fail("timeout_s", f"expected a number of seconds > 0, got {cfg.show(timeout)}")
    seed = r.integer(raw.get("seed", 0), "seed", 0, 2**32 - 1)
    pruner = r.mapping(raw.get("pruner", {"type": "median"}), "pruner")
    r.known(pruner, "pruner", ("type", "warmup_epochs"))
    pruner_type = r.choice(pruner.get("type", "median"), "pruner.type", PRUNERS)
    warmup = r.integer(pruner.get("warmup_epochs", 1), "pruner.warmup_epochs", 0, 10_000)

    fixed = {}
    for key, value in r.mapping(raw.get("fixed") or {}, "fixed").items():
        r.config_key(f"fixed.{key}", key)
        fixed[key] = r.config_value(f"fixed.{key}", key, value)
    for key, value in (overrides or {}).items():
        fixed[key] = cfg.coerce(key, value)

    params = _parameters(r, r.mapping(raw["parameters"], "parameters"), fixed)
    ablation = _ablation(r, raw.get("ablation"), fixed, params)
    if method == "grid":
        for p in params:
            if p.distribution not in ("categorical", "constant"):
                raise r.fail(f"parameters.{p.key}", "method grid needs `values` or `value` for "
                                                    f"every parameter, got {p.distribution}")
    if method == "gp":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise r.fail("method", "gp needs PyTorch (pip install torch==2.13.0); "
                                   "allowed without it: tpe, random, grid, cmaes, qmc")
    return SweepSpec(path, name, method, metric_name, goal, n_trials,
                 None if timeout is None else float(timeout), seed, pruner_type, warmup,
                 fixed, params, ablation)


def _parameters(r: _Reader, raw: dict, fixed: dict) -> tuple[Param, ...]:
    if not raw:
        raise r.fail("parameters", "empty; give at least one config key to search")
    out = []
    for key, spec in raw.items():
        where = f"parameters.{key}"
        r.config_key(where, key)
        if key in cfg.DATA_SOURCE_KEYS:
            raise r.fail(where, "the data a sweep trains on is one choice, not a search: set "
                                f"{key} in `fixed` (or with --set)")
        if key in fixed:
            raise r.fail(where, "also set in `fixed` (or by --set); a key is searched or fixed")
        spec = r.mapping(spec, where)
        out.append(_param(r, where, key, spec))
    return tuple(out)


def _param(r: _Reader, where: str, key: str, spec: dict) -> Param:
    r.known(spec, where, ("distribution", "values", "value", "min", "max", "q"))
    dist = spec.get("distribution")
    if dist == "log_uniform":
        raise r.fail(f"{where}.distribution", "log_uniform takes natural-log exponents in W&B; "
                     "use log_uniform_values with min/max as plain values")
    if dist is None:
        dist = ("categorical" if "values" in spec else "constant" if "value" in spec
                else "int_uniform" if all(isinstance(spec.get(b), int) for b in ("min", "max"))
                else "uniform")
    r.choice(dist, f"{where}.distribution", DISTRIBUTIONS)
    if dist == "constant":
        if "value" not in spec:
            raise r.fail(f"{where}.value", "missing for distribution constant")
        return Param(key, dist, (r.config_value(f"{where}.value", key, spec["value"]),))
    if dist == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise r.fail(f"{where}.values", f"expected a non-empty list, got {cfg.show(values)}")
        checked = tuple(r.config_value(f"{where}.values[{i}]", key, v)
                        for i, v in enumerate(values))
        if len(set(checked)) != len(checked):
            raise r.fail(f"{where}.values", "has duplicates")
        return Param(key, dist, checked)
    if key not in cfg.NUMERIC_KEYS:
        raise r.fail(f"{where}.distribution", f"{dist} needs a numeric key; {key} takes "
                                              f"{cfg.allowed(key)}: use values")
    is_int = cfg.kind(key) == "int"
    if is_int and dist not in ("int_uniform", "q_uniform"):
        raise r.fail(f"{where}.distribution", f"{key} is an integer: use int_uniform, q_uniform "
                                              "or values")
    if not is_int and dist == "int_uniform":
        raise r.fail(f"{where}.distribution", f"{key} is not an integer: use uniform, "
                                              "log_uniform_values or q_uniform")
    for bound in ("min", "max"):
        if bound not in spec:
            raise r.fail(f"{where}.{bound}", f"missing for distribution {dist}")
    low = r.config_value(f"{where}.min", key, r.number(spec["min"], f"{where}.min"))
    high = r.config_value(f"{where}.max", key, r.number(spec["max"], f"{where}.max"))
    if low >= high:
        raise r.fail(f"{where}.min", f"min ({low}) must be below max ({high})")
    if dist == "log_uniform_values" and low <= 0:
        raise r.fail(f"{where}.min", "a log scale needs min > 0")
    q = 0.0
    if dist == "q_uniform":
        q = r.number(spec.get("q", 1), f"{where}.q")
        if q <= 0 or (is_int and not float(q).is_integer()) or q > high - low:
            raise r.fail(f"{where}.q", f"expected a step > 0 that fits in [min, max]"
                                       f"{' and is whole' if is_int else ''}, got {cfg.show(q)}")
    elif "q" in spec:
        raise r.fail(f"{where}.q", f"only q_uniform takes q, not {dist}")
    return Param(key, dist, (), low, high, q)


def _ablation(r: _Reader, raw: Any, fixed: dict, params: tuple[Param, ...]) -> tuple[str, ...]:
    if raw is None:
        return ()
    raw = r.mapping(raw, "ablation")
    r.known(raw, "ablation", ("grad_mode",))
    modes = raw.get("grad_mode")
    if not isinstance(modes, list) or not modes:
        raise r.fail("ablation.grad_mode",
                     f"expected a non-empty list of {', '.join(cfg.GRAD_MODES)}")
    for i, mode in enumerate(modes):
        r.choice(mode, f"ablation.grad_mode[{i}]", cfg.GRAD_MODES)
    if len(set(modes)) != len(modes):
        raise r.fail("ablation.grad_mode", "has duplicates")
    if "grad_mode" in fixed or any(p.key == "grad_mode" for p in params):
        raise r.fail("ablation.grad_mode", "grad_mode is ablated, so it cannot also be fixed "
                                           "or searched")
    return tuple(modes)
