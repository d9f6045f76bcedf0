"""Two runs of one training compared bit for bit, as the store gives their values back:
per epoch, per training step where a divergence was logged, and the tags that are results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Timings differ between any two runs of the same bits; they are never compared.
TIMING_SUFFIX = "_time_s"
# A sweep with `repeats` logs each configuration's mean and std over its seeds on every run
# of it (step 0): results of several trainings, not of the one replayed.
AGGREGATE_SUFFIXES = ("_mean", "_std")
# Tags that are results of the training, so a replay must reproduce them.
RESULT_TAGS = ("init_weights_digest", "diverged_epoch", "diverged_step")
# Metrics logged per training step rather than per epoch (global step numbers).
STEP_SERIES = ("diverging_step_loss",)
# The order a person reads an epoch in; other metrics follow by name.
EPOCH_ORDER = ("train_loss", "test_loss", "test_accuracy", "grad_cosine", "grad_norm_ratio")
# Computed by NumPy through BLAS, whose float64 sums follow its thread count (measured: one
# thread and two give different last bits), while MindSpore's losses do not here.


@dataclass(frozen=True)
class Check:
    """One compared item: an epoch, a per-step series or the result tags."""

    label: str
    shown: dict[str, str]  # what agreed, name -> value, for the identical line
    differs: list[str] = field(default_factory=list)  # "name: recorded vs replay"
    values: int = 0  # metric values compared
    names: tuple[str, ...] = ()  # the metrics or tags that differ


def _compared(key: str) -> bool:
    return not key.endswith((TIMING_SUFFIX, *AGGREGATE_SUFFIXES))


def per_epoch(key: str) -> bool:
    return _compared(key) and key not in STEP_SERIES


def history(c: Any, run_id: str, key: str) -> dict[int, list[float]]:
    """step -> every value logged at it, oldest first (the store's order)."""
    out: dict[int, list[float]] = {}
    for m in c.get_metric_history(run_id, key):
        out.setdefault(m.step, []).append(m.value)
    return out


def _same(a: list[float], b: list[float]) -> bool:
    """Bit for bit as the store gives them back (== on floats), NaN equal to NaN."""
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y))
                                    for x, y in zip(a, b, strict=True))


def _shown(values: list[float], precise: bool = True) -> str:
    return ", ".join(repr(v) if precise else f"{v:.8g}" for v in values) or "(none)"


def compare(c: Any, original: Any, replayed: Any) -> list[Check]:
    """Per epoch, per step series and the result tags: what the original recorded against
    what the replay recorded, both as read back from the store."""
    keys = [k for k in original.data.metrics if _compared(k)]
    keys.sort(key=lambda k: (EPOCH_ORDER.index(k) if k in EPOCH_ORDER else len(EPOCH_ORDER), k))
    old = {k: history(c, original.info.run_id, k) for k in keys}
    new = {k: history(c, replayed.info.run_id, k) for k in keys}

    def differs(k: str, step: int, label: str) -> str:
        a, b = old[k].get(step, []), new[k].get(step, [])
        return "" if _same(a, b) else f"{label}: {_shown(a)} (recorded) vs {_shown(b)} (replay)"

    checks = []
    epochly = [k for k in keys if per_epoch(k)]
    for epoch in sorted({s for k in epochly for s in old[k]}):
        here = [k for k in epochly if epoch in old[k]]
        bad = [k for k in here if differs(k, epoch, k)]
        checks.append(Check(f"epoch {epoch}", {k: _shown(old[k][epoch], False) for k in here},
                            [differs(k, epoch, k) for k in bad],
                            sum(len(old[k][epoch]) for k in here), tuple(bad)))
    for k in (k for k in keys if k in STEP_SERIES):
        bad = [d for s in sorted(set(old[k]) | set(new[k])) if (d := differs(k, s, f"step {s}"))]
        more = [f"and {len(bad) - 3} more steps"] if len(bad) > 3 else []
        checks.append(Check(k, {"steps": f"{min(old[k])}-{max(old[k])}"}, bad[:3] + more,
                            sum(map(len, old[k].values())), (k,) if bad else ()))
    tags_old, tags_new = original.data.tags, replayed.data.tags
    present = [t for t in RESULT_TAGS if t in tags_old or t in tags_new]
    bad = [t for t in present if tags_old.get(t) != tags_new.get(t)]
    checks.append(Check("tags", {t: tags_old[t] for t in present if t in tags_old}, [
        f"{t}: {tags_old.get(t, '(none)')} (recorded) vs {tags_new.get(t, '(none)')} (replay)"
        for t in bad], names=tuple(bad)))
    return checks
