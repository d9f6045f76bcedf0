"""When a trial stops early: this runner's `pruner`, or W&B's `early_terminate`; never
unless the file asks (W&B never stops a run without early_terminate).

W&B's Hyperband (`early_terminate: {type: hyperband, ...}`) is W&B's own rule, run by its
own engine (hyperband.py here, study/wandb_hyperband.py the pruner): W&B's bands, every
trial checked at every band, `strict` as W&B reads it (default true). This runner's
`pruner: {type: hyperband}` is Optuna's HyperbandPruner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from experiments.core import config as cfg
from experiments.search.spec import hyperband
from experiments.search.spec.reader import Reader

PRUNERS = ("median", "hyperband", "none")
MAX_ITER = 2**31 - 1  # W&B's schema bounds min_iter and max_iter by nothing but integers


@dataclass(frozen=True)
class Pruner:
    """When to stop a trial early: the median rule, Hyperband, or never."""

    type: str = "none"
    warmup_epochs: int = 1
    min_resource: int = 1  # hyperband: the first rung, in epochs
    max_resource: int | None = None  # hyperband: the last rung; None: the trials' epochs
    reduction_factor: int = 3  # hyperband: W&B's eta
    strict: bool = True  # W&B's early_terminate.strict (W&B's default)
    source: str = "pruner"  # or early_terminate
    bands: tuple[int, ...] = ()  # early_terminate: W&B's bands, as its engine computes them
    wandb: dict = field(default_factory=dict, compare=False, hash=False)  # early_terminate

    @property
    def rule(self) -> str:
        """The rule's short name, for a pruned trial's reason."""
        return "W&B's hyperband" if self.source == "early_terminate" else self.type

    def __str__(self) -> str:
        if self.type == "median":
            return f"median (warmup {self.warmup_epochs} epochs)"
        if self.type == "hyperband" and self.source == "early_terminate":
            shown = ", ".join(str(b) for b in self.bands[:6]) + (", ..." if len(
                self.bands) > 6 else "")
            return (f"W&B hyperband (its own rule: bands at epochs {shown}; eta "
                    f"{cfg.show(self.wandb.get('eta', 3))}; strict {str(self.strict).lower()})")
        if self.type == "hyperband":
            last = f"{self.max_resource} epochs" if self.max_resource else "the trials' epochs"
            return (f"hyperband (rungs from {self.min_resource} to {last}, reduction "
                    f"factor {self.reduction_factor})")
        return "none"


def read_pruner(r: Reader, raw: dict, notes: list[str]) -> Pruner:
    """`early_terminate` (W&B's) or `pruner` (this runner's), not both; none when the file
    gives neither, as W&B never stops a run unless the file says early_terminate."""
    if "early_terminate" in raw:
        if "pruner" in raw:
            raise r.fail("early_terminate", "and `pruner` both stop trials early: give one")
        return _hyperband(r, r.mapping(raw["early_terminate"], "early_terminate"), notes)
    if "pruner" not in raw:
        return Pruner("none")
    pruner = r.mapping(raw["pruner"], "pruner")
    r.known(pruner, "pruner", ("type", "warmup_epochs"))
    kind = r.choice(pruner.get("type", "median"), "pruner.type", PRUNERS)
    warmup = r.integer(pruner.get("warmup_epochs", 1), "pruner.warmup_epochs", 0, 10_000)
    return Pruner(kind, warmup, min_resource=max(1, warmup))


def _hyperband(r: Reader, raw: dict, notes: list[str]) -> Pruner:
    """W&B's Hyperband, as W&B's engine reads it: bands from max_iter and s when both are
    given (min_iter is then ignored, as W&B ignores it), else from min_iter by eta."""
    where = "early_terminate"
    r.known(raw, where, ("type", "min_iter", "max_iter", "s", "eta", "strict"))
    r.choice(raw.get("type"), f"{where}.type", ("hyperband",))
    # W&B's engine is given the numbers as read here (YAML's "3" is 3), never the text.
    rule: dict = {"type": "hyperband"}
    eta = rule["eta"] = r.number(raw.get("eta", 3), f"{where}.eta")
    if eta <= 1:
        raise r.fail(f"{where}.eta", f"got {cfg.show(eta)}; W&B takes a number > 1")
    if "max_iter" in raw:
        rule["max_iter"] = r.integer(raw["max_iter"], f"{where}.max_iter", 1, MAX_ITER)
        if "s" not in raw:
            raise r.fail(f"{where}.s", "missing: W&B's engine reads max_iter with s (with "
                                       "max_iter and no s it fails, KeyError 's'); give s, "
                                       "or drop max_iter and give min_iter")
        s = rule["s"] = r.number(raw["s"], f"{where}.s")
        if s < 1 or not float(s).is_integer():
            raise r.fail(f"{where}.s", f"got {cfg.show(s)}; W&B's engine counts s bands "
                                       "(range(s)): a whole number >= 1")
        rule["s"] = int(s)
        if "min_iter" in raw:
            notes.append("early_terminate.min_iter: ignored, as W&B ignores it when max_iter "
                         "and s are given")
    elif "min_iter" in raw:
        rule["min_iter"] = r.integer(raw["min_iter"], f"{where}.min_iter", 1, MAX_ITER)
    else:
        raise r.fail(where, "give min_iter, or max_iter with s (W&B's two forms)")
    strict = rule["strict"] = raw.get("strict", True)
    if not isinstance(strict, bool):
        raise r.fail(f"{where}.strict", f"expected true or false, got {cfg.show(strict)}")
    try:
        bands = hyperband.bands(rule)
    except ValueError as e:
        raise r.fail(where, str(e)) from None
    pruner = Pruner("hyperband", min_resource=bands[0], max_resource=rule.get("max_iter"),
                    strict=strict, source="early_terminate", bands=tuple(bands), wandb=rule)
    notes.append(f"early_terminate: {pruner}")
    return pruner
