"""When a trial stops early: this runner's `pruner`, or W&B's `early_terminate`.

W&B's Hyperband (`early_terminate: {type: hyperband, ...}`) becomes Optuna's
HyperbandPruner: rungs from `min_iter` (or `max_iter / eta^s`) by factors of `eta` up to
`max_iter` or the most epochs a trial trains.
"""

from __future__ import annotations

from dataclasses import dataclass

from experiments.core import config as cfg
from experiments.search.spec.reader import Reader

PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class Pruner:
    """When to stop a trial early: the median rule, Hyperband, or never."""

    type: str = "median"
    warmup_epochs: int = 1
    min_resource: int = 1  # hyperband: the first rung, in epochs
    max_resource: int | None = None  # hyperband: the last rung; None: the trials' epochs
    reduction_factor: int = 3  # hyperband: W&B's eta
    strict: bool | None = None  # W&B's early_terminate.strict: recorded, no Optuna counterpart
    source: str = "pruner"  # or early_terminate

    def __str__(self) -> str:
        if self.type == "median":
            return f"median (warmup {self.warmup_epochs} epochs)"
        if self.type == "hyperband":
            last = f"{self.max_resource} epochs" if self.max_resource else "the trials' epochs"
            return (f"hyperband (rungs from {self.min_resource} to {last}, reduction "
                    f"factor {self.reduction_factor})")
        return "none"


def read_pruner(r: Reader, raw: dict, notes: list[str], wandb_form: bool) -> Pruner:
    """`early_terminate` (W&B's) or `pruner` (this runner's), not both; by default the
    median rule, or none for a file in W&B's form (W&B never stops a run early unless
    the file says early_terminate)."""
    if "early_terminate" in raw:
        if "pruner" in raw:
            raise r.fail("early_terminate", "and `pruner` both stop trials early: give one")
        return _hyperband(r, r.mapping(raw["early_terminate"], "early_terminate"), notes)
    if wandb_form:
        notes.append("early_terminate: absent -> no pruning, as W&B (this runner's own "
                     "default, for its own files, is the median rule)")
        return Pruner("none")
    pruner = r.mapping(raw.get("pruner", {"type": "median"}), "pruner")
    r.known(pruner, "pruner", ("type", "warmup_epochs"))
    kind = r.choice(pruner.get("type", "median"), "pruner.type", PRUNERS)
    warmup = r.integer(pruner.get("warmup_epochs", 1), "pruner.warmup_epochs", 0, 10_000)
    return Pruner(kind, warmup, min_resource=max(1, warmup))


def _hyperband(r: Reader, raw: dict, notes: list[str]) -> Pruner:
    """W&B's Hyperband: rungs from min_iter (or max_iter / eta^s) by factors of eta."""
    where = "early_terminate"
    r.known(raw, where, ("type", "min_iter", "max_iter", "s", "eta", "strict"))
    r.choice(raw.get("type"), f"{where}.type", ("hyperband",))
    eta = r.number(raw.get("eta", 3), f"{where}.eta")
    if eta <= 1 or not float(eta).is_integer():
        raise r.fail(f"{where}.eta", f"got {cfg.show(eta)}; Optuna's HyperbandPruner takes a "
                                     "whole reduction factor > 1 (W&B allows any number > 1): "
                                     "use 2 or 3")
    eta = int(eta)
    max_iter = None
    if "max_iter" in raw:
        max_iter = r.integer(raw["max_iter"], f"{where}.max_iter", 1, 10_000)
    if "min_iter" in raw:
        min_iter = r.integer(raw["min_iter"], f"{where}.min_iter", 1, 10_000)
    elif max_iter is not None and "s" in raw:
        s = r.number(raw["s"], f"{where}.s")
        if s < 1:
            raise r.fail(f"{where}.s", f"expected a number of bands >= 1 (as W&B), got {s}")
        # W&B's bands are int(max_iter / eta^k), k = 1..s: the first rung is the last band.
        min_iter = max(1, int(max_iter / eta**s))
    else:
        raise r.fail(where, "give min_iter, or max_iter with s (W&B's two forms)")
    if max_iter is not None and max_iter < min_iter:
        raise r.fail(f"{where}.max_iter", f"{max_iter} is below the first rung, {min_iter}")
    strict = raw.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise r.fail(f"{where}.strict", f"expected true or false, got {cfg.show(strict)}")
    pruner = Pruner("hyperband", min_resource=min_iter, max_resource=max_iter,
                    reduction_factor=eta, strict=strict, source="early_terminate")
    notes.append(f"early_terminate: hyperband -> Optuna HyperbandPruner(min_resource="
                 f"{min_iter}, max_resource={max_iter or 'the most epochs a trial trains'}, "
                 f"reduction_factor={eta})")
    if strict is not None:
        notes.append("early_terminate.strict: recorded; Optuna's Hyperband has no strict mode")
    return pruner
