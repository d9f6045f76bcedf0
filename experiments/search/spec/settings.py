"""The sweep file's settings beside its space, metric and pruner: the budget (n_trials or
W&B's run_cap), the ablation's grad modes, `ordered`, and W&B's keys kept as records.
"""

from __future__ import annotations

import json
from typing import Any

from experiments.core import config as cfg
from experiments.search.spec.reader import Reader
from experiments.search.spec.space import Param

MAX_TRIALS = 100_000
# W&B keys about its own service: kept on the parent run, nothing to do here.
RECORDED_ONLY = ("apiVersion", "kind", "controller", "job", "image_uri")


def ordered(r: Reader, raw: dict) -> bool:
    value = raw.get("ordered", True)
    if not isinstance(value, bool):
        raise r.fail("ordered", f"expected true or false, got {cfg.show(value)}")
    return value


def budget(r: Reader, raw: dict, notes: list[str]) -> int:
    n_trials = r.integer(raw.get("n_trials", 10), "n_trials", 1, MAX_TRIALS)
    if "run_cap" not in raw:
        return n_trials
    cap = r.integer(raw["run_cap"], "run_cap", 1, MAX_TRIALS)
    if "n_trials" in raw and cap != n_trials:
        raise r.fail("run_cap", f"{cap}, but n_trials is {n_trials}: both are the budget; "
                                "give one of them")
    notes.append(f"run_cap: {cap} -> the global budget, {cap} trials")
    return cap


MAX_RECORDED_ITEMS = 100_000


def _items(value: Any, limit: int = MAX_RECORDED_ITEMS) -> int:
    """How many items a YAML value holds, counted up to just past `limit` (an alias bomb
    is never walked whole)."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
    return count


def recorded(r: Reader, raw: dict, notes: list[str]) -> tuple[tuple[str, str], ...]:
    """W&B keys kept on the parent run as text; program and command are not run."""
    out = []
    for key in ("program", "command", "entity", "description", *RECORDED_ONLY):
        if key not in raw:
            continue
        value = raw[key]
        if _items(value) > MAX_RECORDED_ITEMS:  # YAML aliases nest 600 bytes into billions
            raise r.fail(key, f"too large to record (over {MAX_RECORDED_ITEMS:,} items)")
        if key == "command":
            if not isinstance(value, list | str):
                raise r.fail(key, f"expected a list (W&B's form) or text, got {cfg.show(value)}")
            text = json.dumps(value) if isinstance(value, list) else value
        elif isinstance(value, dict | list):
            text = json.dumps(value, default=str)
        else:
            text = str(value)
        out.append((key, cfg.show(text) if len(text) > 5000 else text))
    ran = [k for k, _ in out if k in ("program", "command")]
    if ran:
        notes.append(f"{' and '.join(ran)}: recorded on the parent run, not run: this runner "
                     "trains the MindSpore tutorial's model itself")
    others = [k for k, _ in out if k not in ("program", "command")]
    if others:
        notes.append(f"{', '.join(others)}: recorded on the parent run")
    return tuple(out)


def ablation(r: Reader, raw: Any, fixed: dict, params: tuple[Param, ...]) -> tuple[str, ...]:
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
