"""A sweep file's `parameters:`, read as W&B documents them, into the search space.

Nested `parameters` become dotted config keys (`data: {parameters: {eval_batch_size:
...}}` is `data.eval_batch_size`). Without `distribution`, `values` is categorical,
`value` constant, integer `min`/`max` int_uniform and other `min`/`max` uniform. Each law
takes W&B's keys and no others; its values must be ones the config key accepts.
"""

from __future__ import annotations

import math
from typing import Any

from experiments.core import config as cfg
from experiments.search.spec import wandb_schema
from experiments.search.spec.reader import Reader, SweepError
from experiments.search.spec.space import (
    BETA_FAMILY,
    BOUNDED,
    DISTRIBUTIONS,
    GRID,
    NORMAL_FAMILY,
    QUANTISED,
    Param,
)

# What each law takes (W&B's schema allows nothing else).
KEYS_OF = {
    "constant": ("value",), "categorical": ("values", "probabilities"),
    **{d: ("min", "max") for d in ("int_uniform", "uniform", "log_uniform",
                                   "log_uniform_values", "inv_log_uniform",
                                   "inv_log_uniform_values")},
    **{d: ("min", "max", "q") for d in ("q_uniform", "q_log_uniform", "q_log_uniform_values")},
    "normal": ("mu", "sigma"), "log_normal": ("mu", "sigma"), "q_normal": ("mu", "sigma", "q"),
    "q_log_normal": ("mu", "sigma", "q"), "beta": ("a", "b"), "q_beta": ("a", "b", "q"),
}
SPEC_KEYS = ("distribution", "values", "value", "probabilities", "min", "max", "mu", "sigma",
             "q", "a", "b", "parameters")
MAX_GRID = 1_000_000  # grid points (shuffled in memory; a trial each)
# Laws whose draws are not whole numbers unless quantised by a whole q.
REAL = {"uniform", "log_uniform", "log_uniform_values", "inv_log_uniform",
         "inv_log_uniform_values", "normal", "log_normal", "beta"}
# Bounded laws with a density: an end is almost surely never drawn, so the values EDGE of
# the law's scale in from its ends must be ones the key takes, not the ends themselves.
CONTINUOUS = {"uniform", "log_uniform", "log_uniform_values", "inv_log_uniform",
              "inv_log_uniform_values", "beta"}
EDGE = 1e-9


def parameters(r: Reader, raw: dict, fixed: dict, method: str) -> tuple[Param, ...]:
    if not raw:
        raise r.fail("parameters", "empty; give at least one config key to search")
    out, seen, before = [], {}, len(r.found)
    for where, key, spec in _flatten(r, raw, "parameters", ""):
        with r.each():  # each parameter's mistake is told, with the others'
            if key in seen:
                raise r.fail(where, f"{key} is given twice (also at {seen[key]}): a key has "
                                    "one law")
            seen[key] = where
            out.append(_param(r, where, key, spec, fixed, method))
    if method == "grid":
        sizes = [p.grid_size() for p in out]
        if math.prod(sizes) > MAX_GRID:  # its points are listed and shuffled: memory
            with r.each():
                raise r.fail("parameters", f"the grid has {math.prod(sizes):,.0f} points; at "
                                           f"most {MAX_GRID:,} (each is a trial): give fewer "
                                           "values, a larger q, or method random")
            r.check(since=before)
        for p in out:
            with r.each():
                for i, value in enumerate(p.grid_values()):
                    r.config_value(f"{seen[p.key]} (grid value {i})", p.key, value)
    r.check(since=before)
    return tuple(out)


def _flatten(r: Reader, raw: dict, where: str, prefix: str) -> list[tuple[str, str, dict]]:
    """(where, dotted key, spec) for every leaf parameter, nested `parameters` unfolded."""
    out = []
    for name, spec in raw.items():
        at = f"{where}.{name}"
        spec = r.mapping(spec, at)
        if "parameters" in spec:
            r.known(spec, at, ("parameters",))
            out += _flatten(r, r.mapping(spec["parameters"], f"{at}.parameters"),
                            f"{at}.parameters", f"{prefix}{name}.")
        else:
            out.append((at, f"{prefix}{name}", spec))
    return out


def _law(r: Reader, where: str, spec: dict) -> str:
    r.known(spec, where, SPEC_KEYS)
    dist = spec.get("distribution")
    if dist == "categorical_w_probabilities":  # W&B's schema name for weighted values
        return "categorical"
    if dist is not None:
        return r.choice(dist, f"{where}.distribution", DISTRIBUTIONS)
    if "values" in spec:
        return "categorical"
    if "value" in spec:
        return "constant"
    if "min" in spec and "max" in spec:
        whole = all(isinstance(spec[b], int) and not isinstance(spec[b], bool)
                    for b in ("min", "max"))
        return "int_uniform" if whole else "uniform"
    raise r.fail(where, "give `values`, `value`, `min` and `max`, or a `distribution`")


def _param(r: Reader, where: str, key: str, spec: dict, fixed: dict, method: str) -> Param:
    r.config_key(where, key)
    if key in cfg.DATA_SOURCE_KEYS:
        raise r.fail(where, "the data a sweep trains on is one choice, not a search: set "
                            f"{key} in `fixed` (or with --set)")
    if key == "task":
        raise r.fail(where, "a sweep trains one task: set task in `fixed` (or with --set), "
                            "and search the task's own keys (model.NAME)")
    if key in cfg.PLACEMENT_KEYS:
        raise r.fail(where, "where trials run is not searched: set device in `fixed` (or "
                            "with --set), and give device ids with --devices")
    if key in fixed:
        raise r.fail(where, "also set in `fixed` (or by --set); a key is searched or fixed")
    dist = _law(r, where, spec)
    for k in spec:
        if k != "distribution" and k not in KEYS_OF[dist]:
            raise r.fail(f"{where}.{k}", f"{dist} does not take {k}; it takes "
                                         f"{', '.join(KEYS_OF[dist])}")
    if method == "grid" and (dist not in GRID or "probabilities" in spec):
        raise r.fail(where, f"method grid visits values: give values, value, int_uniform or "
                            f"q_uniform (without probabilities), not {dist}")
    if method == "bayes" and "probabilities" in spec:
        raise r.fail(f"{where}.probabilities", "W&B's bayes search fails on weighted values "
                                               "once it has results (its cdf reads values, "
                                               "not weights): drop probabilities, or use "
                                               "method random or tpe")
    kind = cfg.kind(key)
    if dist in ("constant", "categorical"):
        return _choices(r, where, key, spec, dist)
    if kind not in ("int", "float", "task"):  # a task's key: its file says (task_keys.py)
        raise r.fail(f"{where}.distribution", f"{dist} needs a numeric key; {key} takes "
                                              f"{cfg.allowed(key)}: use values")
    # The law draws with W&B's own engine (space.py): W&B's schema must take it first.
    found = wandb_schema.law(where, spec)
    if found:
        lines = tuple(str(r.fail(k, why)) for k, why in found)
        raise SweepError("; ".join(lines), lines)
    numbers = {k: r.number(spec[k], f"{where}.{k}") for k in ("min", "max", "mu", "sigma",
                                                             "q", "a", "b") if k in spec}
    q = spec.get("q", 1) if dist in QUANTISED else None
    if kind == "int" and (dist in REAL or (q is not None and not float(q).is_integer())):
        raise r.fail(f"{where}.distribution", f"{key} is an integer: use int_uniform, a q_ law "
                                              "with a whole q, or values")
    if q is not None:
        q = _step(r, where, numbers.get("q", q), kind)
    p = Param(key, dist, low=numbers.get("min", 0.0), high=numbers.get("max", 0.0), q=q,
              mu=numbers.get("mu", 0.0), sigma=numbers.get("sigma", 1.0),
              a=numbers.get("a", 1.0), b=numbers.get("b", 1.0), wandb=dict(spec))
    _check_law(r, where, p, spec, method)
    return p


def _choices(r: Reader, where: str, key: str, spec: dict, dist: str) -> Param:
    if dist == "constant":
        if "value" not in spec:
            raise r.fail(f"{where}.value", "missing for distribution constant")
        return Param(key, dist, (r.config_value(f"{where}.value", key, spec["value"]),),
                     wandb=dict(spec))
    values = spec.get("values")
    if not isinstance(values, list) or not values:
        raise r.fail(f"{where}.values", f"expected a non-empty list, got {cfg.show(values)}")
    # A value given twice is drawn twice as often (W&B's way to weight values); a grid
    # visits it once.
    checked = tuple(r.config_value(f"{where}.values[{i}]", key, v) for i, v in enumerate(values))
    if "probabilities" not in spec:
        return Param(key, dist, checked, wandb=dict(spec))
    probs = spec["probabilities"]
    if not isinstance(probs, list) or len(probs) != len(checked):
        raise r.fail(f"{where}.probabilities", f"expected {len(checked)} numbers, one per value, "
                                               f"got {cfg.show(probs)}")
    probs = [r.number(p, f"{where}.probabilities[{i}]") for i, p in enumerate(probs)]
    if min(probs) < 0 or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
        raise r.fail(f"{where}.probabilities", f"expected numbers >= 0 that sum to 1, got "
                                               f"{cfg.show(probs)} (sum {sum(probs):g})")
    return Param(key, dist, checked, tuple(float(p) for p in probs), wandb=dict(spec))


def _step(r: Reader, where: str, q: Any, kind: str) -> int | float:
    if q <= 0:
        raise r.fail(f"{where}.q", f"expected a step > 0, got {cfg.show(q)}")
    # A whole q gives whole values, as W&B returns them (int when q is an int).
    return int(q) if isinstance(q, int) or (kind == "int" and float(q).is_integer()) else q


def _check_law(r: Reader, where: str, p: Param, spec: dict, method: str) -> None:
    """The law's own parameters, then its values against what the key accepts."""
    d = p.distribution
    if d in BOUNDED:
        for bound in ("min", "max"):
            if bound not in spec:
                raise r.fail(f"{where}.{bound}", f"missing for distribution {d}")
        if p.low >= p.high:
            raise r.fail(f"{where}.min", f"min ({p.low}) must be below max ({p.high})")
        if d == "int_uniform" and not all(float(v).is_integer() for v in (p.low, p.high)):
            raise r.fail(f"{where}.min", "int_uniform takes whole min and max")
        if d in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values") \
                and p.low <= 0:
            raise r.fail(f"{where}.min", f"{d} is a log scale: it needs min > 0")
    # W&B's schema allows sigma 0 and a, b 0 (its minimum is 0, inclusive): so does this.
    if d in NORMAL_FAMILY and p.sigma < 0:
        raise r.fail(f"{where}.sigma", f"expected a standard deviation >= 0, got {p.sigma}")
    if d in BETA_FAMILY and (p.a < 0 or p.b < 0):
        raise r.fail(f"{where}.a", f"beta needs a >= 0 and b >= 0, got a={p.a}, b={p.b}")
    # Normal, log-normal: a draw out of range fails its trial. A grid visits its points,
    # each checked (parameters()), not the ends of a law it never draws from.
    if d not in BOUNDED | BETA_FAMILY or (method == "grid" and d in GRID):
        return
    try:
        low, high = p.support()
    except OverflowError:
        raise r.fail(where, f"{d} takes natural-log exponents as min and max: exp({p.high:g}) "
                            "overflows; for plain values use log_uniform_values") from None
    inside = _inside(p) if d in CONTINUOUS else (low, high)  # q_ laws' ends may be drawn
    for end, value, drawn in zip(("smallest", "largest"), (low, high), inside, strict=True):
        _fits(r, where, p.key, value, end, drawn)


def _inside(p: Param) -> tuple[float, float]:
    """The values EDGE of a continuous law's scale in from its ends: beta's on [0, 1],
    the log laws' on the log scale (from the exponents, which never underflow)."""
    d, lo, hi = p.distribution, p.low, p.high
    if d == "beta":
        return EDGE, 1 - EDGE
    if d == "inv_log_uniform":
        lo, hi = -hi, -lo
    elif d in ("log_uniform_values", "inv_log_uniform_values"):
        lo, hi = math.log(lo), math.log(hi)
    ends = lo + EDGE * (hi - lo), hi - EDGE * (hi - lo)
    return ends if d == "uniform" else (math.exp(ends[0]), math.exp(ends[1]))


def _fits(r: Reader, where: str, key: str, value: float, end: str, drawn: float) -> None:
    try:
        cfg.coerce(key, int(drawn) if cfg.kind(key) == "int" else drawn)
    except (cfg.ConfigError, ValueError, OverflowError):  # NaN, inf: W&B's degenerate laws
        raise r.fail(where, f"its {end} value, {value:g}, is outside what {key} takes: "
                            f"{cfg.allowed(key)}") from None
