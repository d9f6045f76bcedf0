"""The search space: W&B's parameter distributions, sampled through Optuna as W&B samples.

W&B draws every parameter as `ppf(u)` with `u` uniform on [0, 1) (its `params.py`). Here a
distribution that Optuna has natively with the same law (uniform, int_uniform, the log
families, categorical) is suggested natively, so the value is the Optuna param and
model-based samplers see its scale. Any other (quantised, normal family, beta, weighted
categorical) is suggested as its quantile `u` (Optuna param `<key>.quantile`) and mapped
through W&B's formula; every sampler works on `u`. Either way the trial records the value
that trains as user attr `value.<key>`, which is also the MLflow param.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from experiments.core import config as cfg
from experiments.core import words
from experiments.search.spec.engine import part

DISTRIBUTIONS = (
    "constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform",
    "log_uniform_values", "q_log_uniform", "q_log_uniform_values", "inv_log_uniform",
    "inv_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal", "beta",
    "q_beta")
# Laws Optuna samples natively: (low, high, log) in value space, from the file's min/max.
NATIVE = {"uniform", "int_uniform", "log_uniform", "log_uniform_values", "inv_log_uniform",
          "inv_log_uniform_values"}
QUANTISED = {"q_uniform", "q_log_uniform", "q_log_uniform_values", "q_normal",
             "q_log_normal", "q_beta"}
BOUNDED = {"uniform", "int_uniform", "q_uniform", "log_uniform", "log_uniform_values",
           "q_log_uniform", "q_log_uniform_values", "inv_log_uniform", "inv_log_uniform_values"}
NORMAL_FAMILY = {"normal", "q_normal", "log_normal", "q_log_normal"}
BETA_FAMILY = {"beta", "q_beta"}
# W&B's grid enumerates these too (int_uniform: min..max; q_uniform: arange(min, max, q)).
GRID = ("constant", "categorical", "int_uniform", "q_uniform")
VALUE_ATTR = "value."  # trial user attr prefix: the value that trains
# u = 0 would map the normal family to -inf; W&B's own draw never hits it in practice.
_EDGE = 1e-12


@dataclass(frozen=True)
class Param:
    """One searched config key and its law, as the sweep file gives it."""

    key: str  # the dotted config key (nested W&B parameters are joined with dots)
    distribution: str
    values: tuple = ()
    probabilities: tuple[float, ...] = ()
    low: float = 0.0  # min
    high: float = 0.0  # max
    q: float | int | None = None
    mu: float = 0.0
    sigma: float = 1.0
    a: float = 1.0
    b: float = 1.0
    # The law as the file wrote it (W&B's keys), for W&B's own engine (ppf, grid, bayes).
    wandb: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def mapped(self) -> bool:
        """Whether Optuna samples the quantile `u` rather than the value."""
        return (self.distribution in QUANTISED | NORMAL_FAMILY | BETA_FAMILY
                or bool(self.probabilities))

    def optuna_name(self, grid: bool = False) -> str:
        return f"{self.key}.quantile" if self.mapped and not grid else self.key

    def native_range(self) -> tuple[float, float, bool]:
        """(low, high, log) of the value, for a law Optuna samples natively."""
        d, lo, hi = self.distribution, self.low, self.high
        if d in ("uniform", "int_uniform"):
            return lo, hi, False
        if d in ("log_uniform_values", "inv_log_uniform_values"):
            # log(1/X) uniform on [log(1/max), log(1/min)] is log(X) uniform on [min, max].
            return lo, hi, True
        if d == "log_uniform":  # min/max are natural-log exponents
            return math.exp(lo), math.exp(hi), True
        if d == "inv_log_uniform":  # log(1/X) uniform on [min, max]
            return math.exp(-hi), math.exp(-lo), True
        raise ValueError(d)

    @property
    def engine_law(self) -> dict:
        """The law as W&B's engine is given it: as the file wrote it, with its values as the
        key takes them (the file's "128" for batch_size is 128), so that W&B's draws and
        the values a trial records are the same values."""
        law = dict(self.wandb)
        if self.distribution == "categorical":
            law["values"] = list(self.values)
        elif self.distribution == "constant":
            law["value"] = self.values[0]
        return law

    @functools.cached_property
    def law(self) -> Any:
        """W&B's own HyperParameter for this law, for drawing (it imports SciPy)."""
        return part("sweeps.params").HyperParameter(self.key, self.engine_law)

    @functools.cached_property
    def filled(self) -> dict:
        """The law with W&B's defaults filled in (e.g. q: 1.0), by W&B's own schema; light
        enough for validation (no SciPy)."""
        return part("sweeps.config").fill_parameter(self.key, self.engine_law)[1]

    def ppf(self, u: float) -> Any:
        """W&B's value at quantile `u`: its `HyperParameter.ppf`, as a plain Python value.
        u is kept a hair inside (0, 1): at the very ends W&B's own formulas leave the law's
        range (int_uniform at 0 gives min - 1, q_normal at 0 or 1 gives -2^63)."""
        if self.distribution == "constant":
            return self.values[0]
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            # A NaN draw (sigma 0) fails its trial with the key's rule; SciPy's warning
            # about it would only repeat that.
            warnings.simplefilter("ignore", RuntimeWarning)
            return plain(self.law.ppf(min(max(u, _EDGE), 1 - _EDGE)))

    def grid_values(self) -> tuple:
        """The values a grid visits, as W&B's grid enumerates them (its grid_search.py):
        int_uniform range(min, max + 1), q_uniform numpy.arange(min, max, q) as arange
        gives it (max left out, save where float steps land a hair above or below it; 0.1
        steps give 0.30000000000000004 as W&B does), values once each."""
        d = self.distribution
        if d in ("categorical", "constant"):
            return tuple(dict.fromkeys(self.values))  # a repeated value is one point
        c = self.filled
        if d == "int_uniform":
            return tuple(range(c["min"], c["max"] + 1))
        # Typed as the key takes them, so the Optuna param, the value that trains and the
        # MLflow param are one value (W&B's 2.0 for epochs is 2 in all three).
        return tuple(typed(self.key, v) for v in np.arange(c["min"], c["max"], c["q"]).tolist())

    def grid_size(self) -> float:
        """How many points grid_values() has, without listing them."""
        d = self.distribution
        if d in ("categorical", "constant"):
            return len(dict.fromkeys(self.values))
        if d == "int_uniform":
            return self.high - self.low + 1
        return max(0.0, math.ceil((self.high - self.low) / self.filled["q"]))

    def optuna_distribution(self, grid: bool = False) -> Any:
        """The Optuna distribution the parameter is suggested from (under `optuna_name`);
        in a grid, the grid's values (the queue's fixed params name them)."""
        from optuna import distributions as od

        if grid:
            return od.CategoricalDistribution(list(self.grid_values()))
        if self.mapped:
            return od.FloatDistribution(0.0, 1.0)
        if self.distribution in ("categorical", "constant"):
            return od.CategoricalDistribution(list(self.values))
        low, high, log = self.native_range()
        if self.distribution == "int_uniform":
            return od.IntDistribution(int(low), int(high))
        return od.FloatDistribution(low, high, log=log)

    def suggest(self, trial: Any, grid: bool = False) -> Any:
        """Sample this parameter on an Optuna trial; returns the value that trains."""
        d = self.optuna_distribution(grid)
        if grid:
            return trial.suggest_categorical(self.key, d.choices)
        if self.mapped:
            return self.ppf(trial.suggest_float(self.optuna_name(), d.low, d.high))
        if hasattr(d, "choices"):
            return trial.suggest_categorical(self.key, d.choices)
        if self.distribution == "int_uniform":
            return trial.suggest_int(self.key, d.low, d.high)
        return trial.suggest_float(self.key, d.low, d.high, log=d.log)

    def describe(self) -> str:
        """The law in words, for --dry-run and the sweep's fingerprint."""
        d = self.distribution
        if self.probabilities:
            return f"categorical {list(self.values)} with probabilities {list(self.probabilities)}"
        if d in ("categorical", "constant"):
            return f"{d} {list(self.values)}"
        q = f" q {self.q}" if d in QUANTISED else ""
        if d in NORMAL_FAMILY:
            return f"{d} mu {self.mu} sigma {self.sigma}{q}"
        if d in BETA_FAMILY:
            return f"{d} a {self.a} b {self.b}{q}"
        return f"{d} [{self.low}, {self.high}]{q}"

    def support(self) -> tuple[float, float]:
        """The smallest and largest value the law can draw (infinite for unbounded laws)."""
        d = self.distribution
        if d in ("categorical", "constant"):
            numbers = [v for v in self.values if isinstance(v, int | float)]
            return (min(numbers), max(numbers)) if numbers else (math.nan, math.nan)
        if d in NATIVE:
            low, high, _ = self.native_range()
            return low, high
        if d == "beta":
            return 0.0, 1.0
        if d == "q_beta":  # the quantised ends can be drawn
            return self.ppf(0.0), self.ppf(1.0)
        if d in ("log_normal", "q_log_normal"):
            return 0.0, math.inf
        if d in NORMAL_FAMILY:
            return -math.inf, math.inf
        # The quantised uniform families: W&B's round(x / q) * q of the law's ends (the
        # formula of its ppf, without its SciPy import).
        q = self.filled.get("q", 1.0)
        lo, hi = self.low, self.high
        if d == "q_log_uniform_values":
            lo, hi = math.log(lo), math.log(hi)
        at = (lo + u * (hi - lo) for u in (_EDGE, 1 - _EDGE))  # as ppf keeps u inside
        ends = [math.exp(x) if d != "q_uniform" else x for x in at]  # exp past ~709:
        # OverflowError, as for a native law's exponent
        rounded = (np.round(x / q) * q for x in ends)
        low, high = (int(x) if isinstance(q, int) else float(x) for x in rounded)
        return low, high


def plain(value: Any) -> Any:
    """A NumPy scalar or 0-d array as the Python number it holds."""
    return value.item() if isinstance(value, np.generic | np.ndarray) else value


def typed(key: str, value: Any) -> Any:
    """A drawn value as the config key's type (W&B's 3.0 for an integer key is 3). Whether
    the key takes it is the config's rule, checked when the trial's config is built: a draw
    it cannot take fails that trial with the rule, and the sweep goes on."""
    value = plain(value)
    kind = cfg.kind(key) if cfg.known(key) else ""
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # W&B's whole q gives ints; a float key records 1.0
    return value


def suggest(trial: Any, params: tuple[Param, ...], grid: bool = False) -> dict[str, Any]:
    """Sample one configuration: {config key: value}, each value recorded on the trial."""
    out: dict[str, Any] = {}
    for p in params:
        out[p.key] = typed(p.key, p.suggest(trial, grid))
        trial.set_user_attr(VALUE_ATTR + p.key, out[p.key])
    return out


shown = words.number  # a trained value as the terminal and the parent's description show it


def values_of(t: Any) -> dict[str, Any]:
    """The values a finished trial trained with, by config key (older trials: its params)."""
    recorded = {k[len(VALUE_ATTR):]: v for k, v in t.user_attrs.items()
                if k.startswith(VALUE_ATTR)}
    return recorded or dict(t.params)
