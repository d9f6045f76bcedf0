"""The budget and the claims: which trials count, which may train, and the words for
their states. Rules only, on trials as Optuna gives them: fast to test on an in-memory
study (tests/test_budget.py).

The budget (`n_trials`) is global: a trial counts when it completed, was pruned or failed
for a reason of its own. Trials that crashed, were interrupted or were refused (over the
budget, a duplicate) or cut short by the infrastructure do not count. A claim names what a
trial is for (a grid point, the retry of a trial): of the trials with the same claim, only
the lowest-numbered live one trains.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments.search.spec.metrics import pareto
from experiments.search.spec.sweepfile import SweepSpec
from experiments.search.study import liveness

FAIL_KIND = liveness.FAIL_KIND  # user attr: why a FAIL trial does not count
REFUSALS = ("over_budget", "duplicate", "no_grid_point")  # trials refused before training
INFRA = "infrastructure"  # fail_kind of a trial cut short by the store, disk or network
# A claim names what a trial is for (a grid point, the retry of a trial): of the trials
# with the same claim, only the lowest-numbered live one trains.
CLAIM, GRID_POINT = "claim", "grid_point"


def counts(t: FrozenTrial) -> bool:
    """Whether a trial used up budget: finished, or failed for a reason of its own (the
    objective records `fail_reason`; crashes, interrupts and refusals leave none)."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and "fail_reason" in t.user_attrs


class Word(StrEnum):
    """A trial's state in the runner's own words, in every line it prints (Optuna's
    WAITING is a queued trial; its FAIL is a failure of the trial's own, which counts, or
    a trial cut short or refused, which does not)."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAILED = "FAILED"  # its own failure (diverged, a config that cannot train): counted
    CUT_SHORT = "CUT SHORT"  # crashed, interrupted, the infrastructure: queued again
    REFUSED = "REFUSED"  # over the budget, a duplicate: never trained
    RUNNING = "RUNNING"
    QUEUED = "QUEUED"  # waiting to be trained: a retry, a warm start, a grid point


def holds(t: FrozenTrial) -> bool:
    """Whether a trial holds its claim: will train, trains, or trained and counts."""
    return t.state in (TrialState.WAITING, TrialState.RUNNING) or counts(t)


def word(t: FrozenTrial) -> Word:
    if t.state == TrialState.FAIL:
        kind = t.user_attrs.get(FAIL_KIND)
        return Word.REFUSED if kind in REFUSALS else Word.CUT_SHORT if kind else Word.FAILED
    return {TrialState.WAITING: Word.QUEUED}.get(t.state) or Word(t.state.name)


def state_name(t: FrozenTrial) -> str:
    """A trial's state as the summary and `status` show it: its word, with why it was cut
    short or refused ('CUT SHORT (interrupted)')."""
    said = word(t)
    kind = t.user_attrs.get(FAIL_KIND, "").replace("_", " ")
    return f"{said} ({kind})" if said in (Word.CUT_SHORT, Word.REFUSED) and kind else said


def tally(trials: list[FrozenTrial], b: Budget) -> str:
    """Every trial once, counted ones apart: '5 COMPLETE, 5 PRUNED, 2 FAILED; not counted:
    2 CUT SHORT (interrupted), 2 QUEUED'. The counted part adds up to the count shown."""
    def listed(group: list[FrozenTrial]) -> str:
        names = Counter(state_name(t) for t in group)
        order = list(Word)
        return ", ".join(f"{n} {name}" for name, n in sorted(
            names.items(), key=lambda item: order.index(Word(item[0].split(" (")[0]))))

    counted = [t for t in trials if b.counts(t)]
    rest = [t for t in trials if not b.counts(t)]
    text = listed(counted) or "none"
    return text + (f"; not counted: {listed(rest)}" if rest else "")


def ranked(trials: list[FrozenTrial], spec: SweepSpec) -> list[FrozenTrial]:
    """The complete trials, best first; for a trade-off, the Pareto front first, each
    part by the first metric."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    first = sorted(done, key=lambda t: t.values[0], reverse=spec.goal == "maximize")
    if not spec.multi:
        return first
    front = {t.number for t in pareto(done, spec.metrics)}
    return sorted(first, key=lambda t: t.number not in front)


def grid_point(params: dict[str, Any]) -> str:
    """A grid point's name: its params, so that it means the same point after the grid
    changes (--allow-change) and for trials of a study made before points were named."""
    return json.dumps(params, sort_keys=True, default=str)


def point_of(t: FrozenTrial) -> str:
    return t.user_attrs.get(GRID_POINT) or grid_point(t.params)


@dataclass(frozen=True)
class Budget:
    """How many trials the sweep runs, and which trials count towards that.

    For a grid, only trials on the points of the grid as the file now gives it count: a
    point dropped by an allowed change is history, and the new points are still visited.
    """

    limit: int
    points: frozenset[str] | None = None  # a grid's points

    @classmethod
    def of(cls, spec: SweepSpec) -> Budget:
        if spec.method != "grid":
            return cls(spec.n_trials)
        points = frozenset(grid_point(p) for p in spec.grid_points())
        return cls(min(spec.n_trials, len(points)), points)

    def counts(self, t: FrozenTrial) -> bool:
        return counts(t) and (self.points is None or point_of(t) in self.points)

    def holds(self, t: FrozenTrial) -> bool:
        """Whether a trial holds its claim: will train, trains, or trained and counts."""
        return t.state in (TrialState.WAITING, TrialState.RUNNING) or self.counts(t)

    def counted(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """The trials that count towards the budget."""
        return [t for t in trials if self.counts(t)]

    def finished(self, study: optuna.Study) -> list[FrozenTrial]:
        """The study's trials that count towards the budget."""
        return self.counted(study.get_trials(deepcopy=False))

    def met(self, study: optuna.Study) -> bool:
        return len(self.finished(study)) >= self.limit

    def said(self, n: int, sep: str = " of ") -> str:
        """'3 of 12 trials counted'. A budget lowered (--n-trials) below what had counted
        says so: it read '4 of 2 trials counted' (review)."""
        if n <= self.limit:
            return f"{n}{sep}{self.limit} trials counted"
        return f"{n} trials counted, more than the {self.limit} asked for now (all kept)"

    def refusal(self, trials: list[FrozenTrial], number: int, attrs: dict[str, Any]) -> str:
        """Why trial `number` (with user attrs `attrs`) must not train, or ''. Every worker
        applies the same rules to the same trial numbers, so the budget is never overshot
        and no claim is trained twice."""
        if self.points is not None and GRID_POINT not in attrs:
            return "no_grid_point"  # lost a race for the queue: the sampler made a trial
        claim = attrs.get(CLAIM)
        if claim and any(t.number < number and t.user_attrs.get(CLAIM) == claim
                         and self.holds(t) for t in trials):
            return "duplicate"
        taken = sorted(t.number for t in trials
                       if self.counts(t) or t.state == TrialState.RUNNING)
        return "" if number in taken[:self.limit] else "over_budget"


def reached(trials: list[FrozenTrial], spec: SweepSpec) -> bool:
    """Whether a completed trial reached the metric's target (W&B's metric.target)."""
    if spec.target is None or spec.multi:
        return False
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if spec.goal == "maximize":
        return any(v >= spec.target for v in values)
    return any(v <= spec.target for v in values)
