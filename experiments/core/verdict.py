"""The autodiff ablation's answer: per grad mode, how many trials trained it, how many
diverged and where, its mean metric, and its paired difference to the objective's mode
with a verdict on the noise, or "identical to the bit" where every epoch's numbers were.

Pure: the sweep's summary, `status` and the parent run read it from the study's trials,
`compare` from MLflow's runs; each hands over one `ModeResult` per trial and grad mode.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

ALPHA = 0.05


@dataclass(frozen=True, kw_only=True)
class ModeResult:
    """One grad mode's training in one trial (one seed: the first, with repeats)."""

    trial: int
    mode: str
    value: float | None  # the final metric; None when it diverged
    diverged: str = ""  # where the loss went non-finite, e.g. "epoch 1, step 3"
    identical: bool = False  # every epoch's losses and accuracy equal the objective mode's


@dataclass(frozen=True, kw_only=True)
class ModeVerdict:
    mode: str
    trials: int
    diverged: tuple[str, ...]  # where, per diverged trial
    mean: float | None
    difference: float | None  # mean paired difference to the objective's mode
    paired: int
    identical: int  # paired trials equal to the bit
    p: float | None  # paired t-test, two-sided

    def words(self, base: str, metric: str) -> str:
        head = f"{self.mode}: {self.trials} trial{'s' * (self.trials != 1)}"
        parts = []
        if self.diverged:
            parts.append(f"diverged in {len(self.diverged)} of {self.trials}"
                         f" ({_where(self.diverged)})")
        if self.mean is not None:
            parts.append(f"mean {metric} {self.mean:.4f}")
        if self.mode == base:
            parts.append("the objective")
        elif self.paired and self.identical == self.paired:
            parts.append(f"identical to {base} to the bit in {self.identical} of "
                         f"{self.paired} paired trials")
        elif self.paired:
            parts.append(f"{self.difference:+.4f} vs {base} over {self.paired} paired "
                         f"trials ({_noise(self.p, self.paired)})")
        return head + (", " + "; ".join(parts) if parts else "")


def verdicts(results: Iterable[ModeResult], modes: tuple[str, ...]) -> list[ModeVerdict]:
    """One verdict per grad mode, in the ablation's order; the first mode is the base."""
    results = list(results)
    base = {r.trial: r for r in results if r.mode == modes[0]}
    out = []
    for mode in modes:
        mine = [r for r in results if r.mode == mode]
        values = [r.value for r in mine if r.value is not None and math.isfinite(r.value)]
        pairs = [(r, base[r.trial]) for r in mine if r.trial in base and mode != modes[0]
                 and r.value is not None and base[r.trial].value is not None]
        diffs = [r.value - b.value for r, b in pairs]
        out.append(ModeVerdict(
            mode=mode, trials=len(mine), diverged=tuple(r.diverged for r in mine if r.diverged),
            mean=statistics.fmean(values) if values else None,
            difference=statistics.fmean(diffs) if diffs else None, paired=len(pairs),
            identical=sum(r.identical for r, _ in pairs), p=_paired_p(diffs)))
    return out


def lines(results: Iterable[ModeResult], modes: tuple[str, ...], metric: str) -> list[str]:
    """The verdict as lines to print: a heading, then one line per grad mode."""
    found = verdicts(results, modes)
    if len(modes) < 2 or not any(v.trials for v in found):
        return []
    return [f"ablation (same seed, weights and batches per trial; {modes[0]} is the "
            "objective):", *(f"  {v.words(modes[0], metric)}" for v in found)]


def _where(places: tuple[str, ...]) -> str:
    """"at epoch 1, step 3"; "at epoch 1, steps 2-4" for several; the epochs otherwise."""
    if len(set(places)) == 1:
        return f"at {places[0]}"
    parsed = [re.fullmatch(r"epoch (\d+), step (\d+)", p) for p in places]
    if not all(parsed):
        return "at " + "; ".join(sorted(set(places)))
    epochs = sorted({int(m[1]) for m in parsed})
    steps = sorted(int(m[2]) for m in parsed)
    if len(epochs) == 1:
        return f"at epoch {epochs[0]}, steps {steps[0]}-{steps[-1]}"
    return "at epochs " + ", ".join(map(str, epochs))


def _paired_p(diffs: list[float]) -> float | None:
    """Two-sided p of the paired t-test that the mean difference is 0; None with fewer
    than two pairs or none that differ (nothing to test)."""
    if len(diffs) < 2 or all(d == diffs[0] for d in diffs):
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    from scipy import stats  # MindSpore's own dependency

    t = mean / (sd / math.sqrt(len(diffs)))
    return float(2 * stats.t.sf(abs(t), len(diffs) - 1))


def _noise(p: float | None, n: int) -> str:
    if p is None:
        return "one pair: no noise verdict" if n < 2 else "the same difference in every pair"
    if p < ALPHA:
        return f"paired t-test p {p:.3f}: beyond the noise"
    return f"paired t-test p {p:.3f}: within the noise"
