"""The budgeted trial loop: run trials until the budget is met, and take care of the ones
that will not finish (failed, queued again with the same params, their runs closed).

Trials that crashed, were interrupted or were cut short by the infrastructure do not count
(budget.py) and are retried with the same params, a config that crashes its worker twice
in a row no more. A grid's points are queued as trials, each claimed once. An outage of
the infrastructure is waited out (runtime/outage.py); other failures of it, a few in a
row, stop the process in one line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments.runtime import faults, infra, interrupts, outage, progress
from experiments.search.spec.sweepfile import SweepSpec
from experiments.search.spec.warm_start import FROM_ATTR
from experiments.search.study import internals, liveness
from experiments.search.trials.budget import (
    CLAIM,
    FAIL_KIND,
    GRID_POINT,
    INFRA,
    REFUSALS,
    Budget,
    grid_point,
    holds,
    point_of,
    reached,
)


class End(StrEnum):
    """How a sweep ended: the parent run's `end_reason`, its MLflow status, its words."""

    BUDGET = "budget"
    TIMEOUT = "timeout"  # timeout_s: a normal end, like the budget
    TARGET = "target"
    INTERRUPTED = "interrupted"
    WORKERS_DIED = "workers died"
    INFRASTRUCTURE = "infrastructure"
    FAILED = "failed"  # short of the budget with no failure of its own (a bug, or a peer)

    @property
    def status(self) -> str:
        return {End.BUDGET: "FINISHED", End.TIMEOUT: "FINISHED", End.TARGET: "FINISHED",
                End.INTERRUPTED: "KILLED"}.get(self, "FAILED")

    @property
    def text(self) -> str:
        return {End.BUDGET: "budget met", End.TIMEOUT: "stopped by timeout_s",
                End.TARGET: "a trial reached metric.target", End.INTERRUPTED: "interrupted",
                End.WORKERS_DIED: "worker processes died",
                End.INFRASTRUCTURE: "the store, its disk or the network failed",
                End.FAILED: "failed"}[self]

    @property
    def complete(self) -> bool:
        """Nothing is left to train (whatever a signal says)."""
        return self in (End.BUDGET, End.TARGET)


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
            latest = internals.latest(study, t)  # with the cause mark_failed kept
            self.close_runs(study, latest, latest.user_attrs.get(FAIL_KIND, kind))

    def stale(self, study: optuna.Study, t: FrozenTrial) -> None:
        """For the RDB storage's heartbeat check, which has failed `t` already."""
        self.lost(study, t, "crashed", "heartbeat")


def _top_up_grid(study: optuna.Study, spec: SweepSpec, trials: list[FrozenTrial],
                 b: Budget) -> None:
    """Queue the grid points no trial holds, as many as the budget still needs.

    Each point is queued with its claim; two workers queueing the same point at once
    leave a duplicate, which `Budget.refusal` turns away when it is popped.
    """
    holding = [t for t in trials if b.holds(t)]
    held = {point_of(t) for t in holding}
    free = [p for p in spec.grid_points() if grid_point(p) not in held]
    for params in free[:max(0, b.limit - len(holding))]:
        point = grid_point(params)
        study.enqueue_trial(params, user_attrs={GRID_POINT: point, CLAIM: f"grid:{point}"},
                            skip_if_exists=False)


def _turn_away_queue(study: optuna.Study, b: Budget) -> None:
    """Once the sweep has ended, refuse what is still queued (a grid point two workers
    queued at once, a retry no longer needed), on the record: a finished sweep shows no
    trial QUEUED for ever, and a rerun has nothing to pop."""
    while (t := internals.pop_waiting(study)) is not None:
        trials = [u for u in study.get_trials(deepcopy=False) if u.number != t.number]
        kind = b.refusal(trials, t.number, t.user_attrs) or "over_budget"
        internals.set_attr(study, t, FAIL_KIND, kind)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            internals.set_failed(study, t)


# --- workers, crashes, retries ----------------------------------------------------------


def mark_failed(study: optuna.Study, t: FrozenTrial, kind: str, set_state: bool = True,
                how: str = "") -> bool:
    """Fail a trial that will not finish, and queue its params for one retry. False when
    someone else finished it meanwhile (then it is theirs, and so are its runs).

    A trial found RUNNING after its process died may have recorded its cause and queued
    its retry already, its FAIL being the one write a full disk refused: the cause it gave
    stays (not 'crashed'), and no second retry is queued for a claim another trial holds
    (CI saw the twin refused as a duplicate, and the resume line counted it as queued)."""
    kind = t.user_attrs.get(FAIL_KIND) or kind
    try:
        internals.set_attr(study, t, FAIL_KIND, kind)
        if set_state:
            internals.set_failed(study, t)
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
    claim = t.user_attrs.get(CLAIM) or f"retry:{t.number}"
    held = any(u.number != t.number and u.user_attrs.get(CLAIM) == claim and holds(u)
               for u in study.get_trials(deepcopy=False))
    if not crashed_again and t.params and kind not in REFUSALS and not held:
        attrs = {"retry_of": t.number, "retry_reason": kind, "crash_detected_by": how,
                 CLAIM: claim}
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
        if (local or not t.user_attrs.get("worker")) and liveness.dead_here(t):
            recovery.lost(study, t, "crashed", "process gone")
        elif liveness.silent(t):
            recovery.lost(study, t, "crashed", "beats stopped")
        else:
            continue
        n += 1
    return n


def work(study: optuna.Study, spec: SweepSpec, b: Budget,
         objective: Callable[[optuna.Trial], float], on_done: Callable[[FrozenTrial], None],
         recovery: Recovery, deadline: float | None = None, poll_s: float = 0.25) -> End:
    """Run trials until the global budget is met ('budget') or the deadline passes
    ('timeout').

    When the trials still running elsewhere would use up the budget, wait for them rather
    than start more: they may fail (a crashed worker) and free their slot for a retry. The
    wait is polled every `poll_s`: the idle worker of a short sweep is what its command
    waits for last (a 1 s poll cost the main job 1.2 s with 2 workers, measured).
    """
    me = liveness.worker_id()
    # The journal knows its (one host's) workers by their process, RDB storage by Optuna's
    # heartbeats; any other storage (Optuna's gRPC proxy) by the runner's own beats.
    beats = not internals.is_journal(study) and not internals.native_heartbeat(study)

    def wrapped(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", me)
        faults.point("trial_start")
        refusal = b.refusal(study.get_trials(deepcopy=False), trial.number, trial.user_attrs)
        if refusal:
            trial.set_user_attr(FAIL_KIND, refusal)
            raise Refused(refusal)
        try:
            with liveness.beating(study, trial) if beats else contextlib.nullcontext():
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
                    recovery.lost(study, internals.latest(study, trial), INFRA, set_state=False)
                raise
            if "fail_reason" not in trial.user_attrs:
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:1000])
            raise
        except KeyboardInterrupt:
            # Optuna itself marks the trial FAIL as the interrupt passes through it.
            with interrupts.shielded():
                recovery.lost(study, internals.latest(study, trial), "interrupted",
                              set_state=False)
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
            ended = None
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
    return End.TIMEOUT


def _step(study: optuna.Study, spec: SweepSpec, wrapped: Callable[[optuna.Trial], float],
          on_done: Callable[[FrozenTrial], None], recovery: Recovery, b: Budget, me: str,
          poll_s: float) -> End | None:
    """One turn of the loop: how the sweep ended, or None to go on."""
    trials = study.get_trials(deepcopy=False)
    done = sum(b.counts(t) for t in trials)
    if done >= b.limit:
        _turn_away_queue(study, b)
        return End.BUDGET
    if reached(trials, spec):  # running trials elsewhere finish; none starts
        _turn_away_queue(study, b)
        return End.TARGET
    # After the budget: a Ctrl-C once the budget is met cuts nothing short, and the sweep
    # ends as met (it used to end KILLED, "interrupted", all its trials counted).
    interrupts.check()
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if done + len(running) >= b.limit:
        # RDB storage knows dead workers on any machine by their heartbeat; the journal
        # (one machine) by their process.
        if internals.is_journal(study):
            recover(study, recovery)
        else:
            liveness.fail_stale(study)
            recover(study, recovery, local=False)
        time.sleep(poll_s)
        return None
    if spec.method == "grid":
        _top_up_grid(study, spec, trials, b)
    study.optimize(wrapped, n_trials=1, catch=(Exception,), gc_after_trial=False)
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == me]
    if mine and mine[-1].user_attrs.get(FAIL_KIND) not in (*REFUSALS, INFRA):
        on_done(mine[-1])
        faults.point("trial_counted")
    return None
