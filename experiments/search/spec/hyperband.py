"""W&B's hyperband arithmetic, asked of W&B's own engine (the `sweeps` package).

The bands a sweep's `early_terminate` gives are what `sweeps.hyperband_stop_runs` computes
for it; they are read back from the run it annotates, so that the dry run, the records
and the pruner (study/wandb_hyperband.py) never restate W&B's formula.
"""

from __future__ import annotations

import warnings

from experiments.search.spec.engine import part

METRIC = "objective"  # the name the curves are given for W&B's rule


def config_for(early_terminate: dict, goal: str) -> dict:
    """W&B's sweep config as its hyperband rule reads it."""
    return {"method": "random", "metric": {"name": METRIC, "goal": goal},
            "early_terminate": dict(early_terminate), "parameters": {"x": {"value": 0}}}


def stop_runs(runs: list, early_terminate: dict, goal: str) -> list:
    """W&B's verdict: which of `runs` (sweeps.SweepRun) its hyperband rule stops now."""
    rule = part("sweeps.hyperband_stopping")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rule.hyperband_stop_runs(
            runs, config_for(early_terminate, goal))


def bands(early_terminate: dict) -> list[int]:
    """W&B's bands, as its rule computes them (asked with one run, which it annotates).
    Raises ValueError where W&B's engine fails on the mapping."""
    sweeps = part("sweeps")
    probe = sweeps.SweepRun(name="probe", state=sweeps.RunState.running,
                            history=[{METRIC: 0.0}])
    try:
        stop_runs([probe], early_terminate, "minimize")
    except Exception as e:  # any failure of W&B's engine on the rule is its verdict
        raise ValueError(f"W&B's hyperband fails on it ({type(e).__name__}: {e})") from None
    return list(probe.early_terminate_info["bands"])
