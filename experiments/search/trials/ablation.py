"""The ablation's verdict read from the study's trials (core/verdict.py says it).

A trial counts for the verdict once it trained its grad modes: complete, pruned (its
variants ran as many epochs) or failed because the objective's mode diverged.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState

from experiments.core import verdict
from experiments.search.spec.sweepfile import SweepSpec


def results(trials: list[FrozenTrial], spec: SweepSpec) -> list[verdict.ModeResult]:
    """One result per trial and grad mode of the ablation (the first seed's)."""
    out = []
    for t in trials:
        trained = t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and " diverged" in t.user_attrs.get("fail_reason", ""))
        if not trained:
            continue
        for mode in spec.ablation:
            where = t.user_attrs.get(f"diverged_at.{mode}", "")
            # The first seed's (with repeats, `{metric}.{mode}` is the mean over seeds).
            value = t.user_attrs.get(f"first.{spec.metric}.{mode}",
                                     t.user_attrs.get(f"{spec.metric}.{mode}"))
            if value is None and not where:
                continue  # a trial from before the verdict was kept, or one cut short
            out.append(verdict.ModeResult(
                trial=t.number, mode=mode, value=None if where else value, diverged=where,
                identical=bool(t.user_attrs.get(f"identical.{mode}"))))
    return out


def lines(trials: list[FrozenTrial], spec: SweepSpec) -> list[str]:
    """The verdict's lines for a terminal; none for a sweep without an ablation."""
    if len(spec.ablation) < 2:
        return []
    return verdict.lines(results(trials, spec), spec.ablation, spec.metric)
