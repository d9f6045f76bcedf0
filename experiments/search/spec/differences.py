"""Where this runner still does not do what W&B would with a file, and which a file touches.

W&B's own engine (the `sweeps` package) decides validation, laws, grid points, hyperband
and bayes; what is left is listed here, each with its reason, and docs/wandb.md says the
same at length (a test keeps the two in step). `--dry-run` prints the ones a file touches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from experiments.search.spec.space import BOUNDED, NORMAL_FAMILY
from experiments.search.spec.sweepfile import SweepSpec

OPTUNA_METHODS = ("tpe", "cmaes", "qmc", "gp")


@dataclass(frozen=True)
class Difference:
    """One way this runner departs from W&B, and whether a sweep touches it."""

    name: str  # its heading in docs/wandb.md
    says: str  # one line for --dry-run
    touches: Callable[[SweepSpec], bool]


def _keys_in(spec: SweepSpec) -> set[str]:
    return {k for k, _ in spec.recorded}


def _impute(spec: SweepSpec) -> bool:
    metric = spec.engine.get("metric")
    return isinstance(metric, dict) and any(k in metric for k in ("impute",
                                                                  "impute_while_running"))


def _open_ended(spec: SweepSpec) -> bool:
    """A law whose draws may fall outside what its key takes (e.g. a normal for epochs)."""
    for p in spec.parameters:
        if p.distribution in NORMAL_FAMILY | {"beta", "q_beta"}:
            return True
        if p.distribution in BOUNDED and p.wandb.get("min") in (0, 0.0):
            return True
    return False


DIFFERENCES = (
    Difference("program and command are not run",
               "program/command are recorded, not run: this runner trains its task itself",
               lambda s: bool(_keys_in(s) & {"program", "command"})),
    Difference("a draw the key cannot take fails its trial",
               "a draw outside what its key takes fails that trial with the key's rule (W&B "
               "would hand it to the program)", _open_ended),
    Difference("grid order", "a grid visits its points in an order shuffled by `seed` (W&B: "
               "in order), so a budget below the grid's size spreads over it",
               lambda s: s.method == "grid"),
    Difference("seeded draws", "random draws are seeded per trial by `seed`: a rerun draws the "
               "same configs (W&B's are not seeded)",
               lambda s: s.method in ("random", "bayes")),
    Difference("one-worker answer", "workers see the earlier trials as one agent would "
               "(ordered: true); W&B's controller sees whatever has finished",
               lambda s: s.ordered and (s.method == "bayes" or s.pruner.type != "none")),
    Difference("impute outside bayes", "metric.impute: only W&B's bayes imputes; Optuna's "
               "samplers leave failed trials out",
               lambda s: _impute(s) and s.method != "bayes"),
    Difference("Optuna methods", "method tpe/cmaes/qmc/gp is Optuna's, not W&B's",
               lambda s: s.method in OPTUNA_METHODS),
    Difference("the ends of a law", "a quantile is kept 1e-12 inside (0, 1), where W&B's "
               "own formulas leave the law's range", lambda s: any(p.mapped
                                                                   for p in s.parameters)),
    Difference("this runner's pruner", "`pruner` is this runner's (Optuna's median or "
               "Hyperband pruner), not W&B's early_terminate",
               lambda s: s.pruner.source == "pruner" and s.pruner.type != "none"),
)


def touched(spec: SweepSpec) -> list[str]:
    """The differences this sweep touches, one line each."""
    return [d.says for d in DIFFERENCES if d.touches(spec)]
