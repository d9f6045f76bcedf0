"""Trials under a global budget: who may train, what they train, and what to do with the
ones that will not finish.

The budget (`n_trials`) is global: a trial counts when it completed, was pruned or failed
for a reason of its own. Trials that crashed, were interrupted or were refused (over the
budget, a duplicate) or cut short by the infrastructure do not count, and are retried with
the same params (a config that crashes twice in a row, no more). A grid's points are
queued as trials, each claimed once.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments.runtime import faults, infra, interrupts, outage, progress
from experiments.search import liveness as lv
from experiments.search import study as st
from experiments.search.objectives import pareto
from experiments.search.sweepfile import SweepSpec
from experiments.search.warmstart import FROM_ATTR

FAIL_KIND = "fail_kind"  # user attr: why a FAIL trial does not count towards the budget
REFUSALS = ("over_budget", "duplicate", "no_grid_point")  # trials refused before training
INFRA = "infrastructure"  # fail_kind of a trial cut short by the store, disk or network
# A claim names what a trial is for (a grid point, the retry of a trial): of the trials
# with the same claim, only the lowest-numbered live one trains.
CLAIM, GRID_POINT = "claim", "grid_point"


class Refused(Exception):
    """This trial must not train: over the global budget, or a duplicate of another."""


@dataclass
class Recovery:
    """What happens to a trial that will not finish: it is failed, its params are queued
    for one retry, and `close_runs` (plugged in by the tracking side once the store is
    open) marks and closes its runs."""

    close_runs: Callable[[optuna.Study, FrozenTrial, str], None] = lambda study, t, kind: None
    # Raises while the infrastructure is down (plugged in with the store): an outage is
    # waited out by asking it (outage.py).
    probe: Callable[[], None] = lambda: None

    def lost(self, study: optuna.Study, t: FrozenTrial, kind: str, how: str = "",
             set_state: bool = True) -> None:
        if mark_failed(study, t, kind, set_state=set_state, how=how):
            self.close_runs(study, st.latest(study, t), kind)

    def stale(self, study: optuna.Study, t: FrozenTrial) -> None:
        """For the RDB storage's heartbeat check, which has failed `t` already."""
        self.lost(study, t, "crashed", "heartbeat")


# --- the budget -----------------------------------------------------------------------


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


def reached(trials: list[FrozenTrial], spec: SweepSpec) -> bool:
    """Whether a completed trial reached the metric's target (W&B's metric.target)."""
    if spec.target is None or spec.multi:
        return False
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if spec.goal == "maximize":
        return any(v >= spec.target for v in values)
    return any(v <= spec.target for v in values)


def budget(spec: SweepSpec) -> int:
    """n_trials, capped for a grid at the number of grid points."""
    return Budget.of(spec).limit


def finished(study: optuna.Study, spec: SweepSpec) -> list[FrozenTrial]:
    """The trials that count towards the budget."""
    b = Budget.of(spec)
    return [t for t in study.get_trials(deepcopy=False) if b.counts(t)]


def _refusal(trials: list[FrozenTrial], trial: optuna.Trial, spec: SweepSpec,
             b: Budget) -> str:
    """Why `trial` must not train, or ''. Every worker applies the same rules to the same
    trial numbers, so the budget is never overshot and no claim is trained twice."""
    attrs = trial.user_attrs
    if b.points is not None and GRID_POINT not in attrs:
        return "no_grid_point"  # lost a race for the queue: the sampler made a fresh trial
    claim = attrs.get(CLAIM)
    if claim and any(t.number < trial.number and t.user_attrs.get(CLAIM) == claim
                     and b.holds(t) for t in trials):
        return "duplicate"
    taken = sorted(t.number for t in trials if b.counts(t) or t.state == TrialState.RUNNING)
    return "" if trial.number in taken[:b.limit] else "over_budget"


def _top_up_grid(study: optuna.Study, spec: SweepSpec, trials: list[FrozenTrial],
                 b: Budget) -> None:
    """Queue the grid points no trial holds, as many as the budget still needs.

    Each point is queued with its claim; two workers queueing the same point at once
    leave a duplicate, which `_refusal` turns away when it is popped.
    """
    holding = [t for t in trials if b.holds(t)]
    held = {point_of(t) for t in holding}
    free = [p for p in spec.grid_points() if grid_point(p) not in held]
    for params in free[:max(0, b.limit - len(holding))]:
        point = grid_point(params)
        study.enqueue_trial(params, user_attrs={GRID_POINT: point, CLAIM: f"grid:{point}"},
                            skip_if_exists=False)


# --- workers, crashes, retries ----------------------------------------------------------


def mark_failed(study: optuna.Study, t: FrozenTrial, kind: str, set_state: bool = True,
                how: str = "") -> bool:
    """Fail a trial that will not finish, and queue its params for one retry. False when
    someone else finished it meanwhile (then it is theirs, and so are its runs)."""
    try:
        st.set_attr(study, t, FAIL_KIND, kind)
        if set_state:
            st.set_failed(study, t)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Unless that someone was the heartbeat check failing it for us (then the retry
        # below is ours to queue), there is nothing to do.
        if how != "heartbeat":
            return False
    # A config that crashes its worker twice in a row is not retried again (it must not
    # crash them all); one cut short by Ctrl-C or the infrastructure is, as often as it
    # takes (neither is its fault, and a worker stops after a few infrastructure failures
    # in a row).
    crashed_again = kind == "crashed" and t.user_attrs.get("retry_reason") == "crashed"
    if not crashed_again and t.params:
        attrs = {"retry_of": t.number, "retry_reason": kind, "crash_detected_by": how,
                 CLAIM: t.user_attrs.get(CLAIM) or f"retry:{t.number}"}
        if FROM_ATTR in t.user_attrs:  # the retry trains the warm start's config
            attrs[FROM_ATTR] = t.user_attrs[FROM_ATTR]
        if GRID_POINT in t.user_attrs:
            attrs[GRID_POINT] = t.user_attrs[GRID_POINT]
        study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)
    return True


def recover(study: optuna.Study, recovery: Recovery, local: bool = True) -> int:
    """Fail the RUNNING trials whose process is gone, or whose beats stopped; returns how
    many. With `local` False (RDB storage, whose heartbeats judge processes) only trials
    naming no worker are judged by their process."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if (local or not t.user_attrs.get("worker")) and lv.dead_here(t):
            recovery.lost(study, t, "crashed", "process gone")
        elif lv.silent(t):
            recovery.lost(study, t, "crashed", "beats stopped")
        else:
            continue
        n += 1
    return n


def work(study: optuna.Study, spec: SweepSpec, objective: Callable[[optuna.Trial], float],
         on_done: Callable[[FrozenTrial], None], recovery: Recovery,
         deadline: float | None = None, poll_s: float = 0.25) -> str:
    """Run trials until the global budget is met ('budget') or the deadline passes
    ('timeout').

    When the trials still running elsewhere would use up the budget, wait for them rather
    than start more: they may fail (a crashed worker) and free their slot for a retry. The
    wait is polled every `poll_s`: the idle worker of a short sweep is what its command
    waits for last (a 1 s poll cost the main job 1.2 s with 2 workers, measured).
    """
    b = Budget.of(spec)
    me = lv.worker_id()
    # The journal knows its (one host's) workers by their process, RDB storage by Optuna's
    # heartbeats; any other storage (Optuna's gRPC proxy) by the runner's own beats.
    beats = not st.is_journal(study) and not st.native_heartbeat(study)

    def wrapped(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", me)
        faults.point("trial_start")
        refusal = _refusal(study.get_trials(deepcopy=False), trial, spec, b)
        if refusal:
            trial.set_user_attr(FAIL_KIND, refusal)
            raise Refused(refusal)
        try:
            with lv.beating(study, trial) if beats else contextlib.nullcontext():
                value = objective(trial)
            faults.point("before_tell")
            return value
        except (Refused, optuna.TrialPruned):
            raise
        except Exception as exc:
            nonlocal broke
            broke = infra.what_broke(exc)
            if broke:  # not the trial's fault: not counted, queued again
                with contextlib.suppress(Exception):  # the storage may be what broke
                    recovery.lost(study, st.latest(study, trial), INFRA, set_state=False)
                raise
            if "fail_reason" not in trial.user_attrs:
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:1000])
            raise
        except KeyboardInterrupt:
            # Optuna itself marks the trial FAIL as the interrupt passes through it.
            with interrupts.shielded():
                recovery.lost(study, st.latest(study, trial), "interrupted", set_state=False)
            raise

    broke, in_a_row = "", 0  # what broke in this turn (set by `wrapped` too)
    while deadline is None or time.time() < deadline:
        broke = ""
        try:
            ended = _step(study, spec, wrapped, on_done, recovery, b, me, poll_s)
        except Exception as exc:  # the storage or the store, outside a trial
            broke = infra.what_broke(exc)
            if not broke:
                raise
            ended = ""
        if ended:
            return ended
        if not broke:
            in_a_row = 0
            continue
        in_a_row += 1
        if outage.passes(broke) and outage.ride_out(broke, recovery.probe, progress.say):
            in_a_row = 0  # an outage that came and went: the next failure starts afresh
        elif in_a_row >= infra.MAX_IN_A_ROW:
            raise infra.InfrastructureDown(broke, in_a_row)
        else:
            time.sleep(2.0 ** in_a_row)  # a database or server that hiccups: give it time
    return "timeout"


def _step(study: optuna.Study, spec: SweepSpec, wrapped: Callable[[optuna.Trial], float],
          on_done: Callable[[FrozenTrial], None], recovery: Recovery, b: Budget, me: str,
          poll_s: float) -> str:
    """One turn of the loop: how the sweep ended, or '' to go on."""
    trials = study.get_trials(deepcopy=False)
    done = sum(b.counts(t) for t in trials)
    if done >= b.limit:
        return "budget"
    if reached(trials, spec):  # running trials elsewhere finish; none starts
        return "target"
    # After the budget: a Ctrl-C once the budget is met cuts nothing short, and the sweep
    # ends as met (it used to end KILLED, "interrupted", all its trials counted).
    interrupts.check()
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if done + len(running) >= b.limit:
        # RDB storage knows dead workers on any machine by their heartbeat; the journal
        # (one machine) by their process.
        if st.is_journal(study):
            recover(study, recovery)
        else:
            lv.fail_stale(study)
            recover(study, recovery, local=False)
        time.sleep(poll_s)
        return ""
    if spec.method == "grid":
        _top_up_grid(study, spec, trials, b)
    study.optimize(wrapped, n_trials=1, catch=(Exception,), gc_after_trial=False)
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == me]
    if mine and mine[-1].user_attrs.get(FAIL_KIND) not in (*REFUSALS, INFRA):
        on_done(mine[-1])
        faults.point("trial_counted")
    return ""
