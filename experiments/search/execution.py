"""Where a session's trials run: here, or in worker processes (runtime/workers.py), forked
from this process where its connections can cross a fork, else `runner.py` commands. The
parent of workers prints for them: a bar and a line per counted trial, read from the study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial

from experiments.core import config as cfg
from experiments.core.train import Prepared
from experiments.core.train import forkable as forkable_core
from experiments.runtime import infra, interrupts, progress, workers
from experiments.search.runs import parent, story, trial_runs
from experiments.search.study import internals, liveness
from experiments.search.study import study as studies
from experiments.search.study.storage import open_storage
from experiments.search.trials.budget import reached
from experiments.search.trials.loop import End, recover, work
from experiments.search.trials.objective import TrialRunner
from experiments.tracking import store as tracking_store
from experiments.tracking.store import MLRUNS
from experiments.tracking.tracked_fit import TrackContext

if TYPE_CHECKING:
    from experiments.search.session import Session

# The command a worker process runs (forked workers need none).
RUNNER = Path(__file__).resolve().parents[2] / "runner.py"
FALLBACK_ENV = "RUNNER_DATA_FALLBACK"  # set for worker processes once the parent fell back


def run_trials(s: Session) -> End:
    """Trials here, or in worker processes; returns how the sweep ended."""
    spec, options = s.spec, s.options
    deadline = time.time() + spec.timeout_s if spec.timeout_s else None
    n, ids = options.worker_count, options.device_ids
    cpu = cfg.build(spec.fixed).device == "CPU"
    done = len(s.budget.finished(s.study))  # read once: the workers and the bar use it
    left = s.budget.limit - done
    if options.workers is None and not ids:
        n = n if cpu else 1  # auto: one per core on CPU, one card without --devices
    # No more workers than trials left to run: one without a trial would start, compile
    # (~11 s on 2 cores) and stop (review: --workers 3 with one trial left started 3).
    n = max(1, min(n, left))
    if n > 1 and options.parent_run is None:
        return _with_workers(s, n, cpu, deadline)
    shown = options.parent_run is None
    bar = progress.trial_bar(s.budget.limit, done, enabled=shown)

    def done(t: FrozenTrial) -> None:
        trial_runs.tag_trial_runs(s.client, t)
        bar.update(1)
        progress.say(parent.counted_line(t, s.study.get_trials(deepcopy=False), spec))
        story.update(s.client, s.parent, s.study, spec, s.budget)

    interrupts.waiting_for("the running trial to stop at its next step and close its run "
                           "as KILLED")
    ctx = TrackContext(client=s.client, data=s.mnist, prepared=Prepared.of(s.mnist),
                       experiment=spec.experiment, task=s.task, parent_run_id=s.parent)
    try:
        return work(s.study, spec, s.budget, TrialRunner(spec, ctx).objective, done,
                    s.recovery, deadline)
    finally:
        bar.close()


def _with_workers(s: Session, n: int, cpu: bool, deadline: float | None) -> End:
    ids = s.options.device_ids
    forked = (tracking_store.forkable(s.client) and internals.forkable(s.study) and not ids
              and forkable_core() and liveness.recognisable())

    def before_fork() -> None:  # no pooled connection of this process crosses a fork
        tracking_store.before_fork(s.client)
        internals.before_fork(s.study)

    def recovered() -> int:
        return recover(s.study, s.recovery)

    interrupts.waiting_for(f"the {n} workers to stop their trials at the next step and "
                           "close their runs as KILLED")
    progress.say(f"{n} workers: each compiles its graphs (once per batch size and grad "
                 "mode), then trains; a line per trial as it is counted")
    with _watch(s) as tick:
        if forked:
            died = workers.fork_workers(n, lambda i: _worker(s), recovered, tick,
                                        progress.say, cpu, before_fork)
        else:
            env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
            if s.mnist.fallback_reason:  # the workers use the sample at once
                env[FALLBACK_ENV] = s.mnist.fallback_reason
            died = workers.run_workers(
                lambda i, core: s.options.worker_argv(RUNNER, s.store_url, s.parent,
                                                      ids[i] if ids else None, core),
                n, env, recovered, tick, progress.say, cpu)
    # Workers stop at the budget or the deadline; a shortfall without a deadline means
    # some died (the others may have made up for them).
    if s.budget.met(s.study):
        return End.BUDGET
    if reached(s.study.get_trials(deepcopy=False), s.spec):
        return End.TARGET
    interrupts.check()  # short of the budget because of a Ctrl-C
    broke = [said for code, said in died if code == workers.EXIT_INFRA]
    if broke:
        raise infra.InfrastructureDown(
            next((b for b in broke if b), "the store, its disk or the network failed"),
            infra.MAX_IN_A_ROW)
    return End.WORKERS_DIED if died else End.TIMEOUT if deadline else End.FAILED


@contextmanager
def _watch(s: Session) -> Iterator[Callable[[], None]]:
    """The parent of workers draws the bar and prints each trial's line, from the study:
    one process writes to the terminal, so the workers' lines cannot tear its bar."""
    seen = {t.number for t in s.budget.finished(s.study)}
    bar = progress.trial_bar(s.budget.limit, len(seen))

    def tick() -> None:
        trials = s.study.get_trials(deepcopy=False)
        for t in s.budget.counted(trials):
            if t.number not in seen:
                seen.add(t.number)
                bar.update(1)
                # The best of the trials shown so far, so the lines read in order.
                progress.say(parent.counted_line(
                    t, [u for u in trials if u.number in seen], s.spec))

    try:
        yield tick
    finally:
        # Also after Ctrl-C: the trials counted since the last tick get their lines. A
        # storage error here must not hide how the sweep ended.
        with contextlib.suppress(Exception):
            tick()
        bar.close()


def _worker(s: Session) -> int:
    """A forked worker: its parent's session, as a `--parent-run` worker process's."""
    progress.be_quiet(True)
    # The parent's connections stay the parent's: the pools this fork inherited are let go
    # unclosed, and the storage is opened anew. Optuna's journal names a worker when its
    # storage is opened, so forks of one opened storage would all be one worker to it, and
    # two of them could both take the same queued trial.
    tracking_store.after_fork(s.client)
    internals.after_fork(s.study)
    study = studies.open_study(s.spec, open_storage(s.store_url, MLRUNS, s.recovery.stale))
    mine = dataclasses.replace(s, options=dataclasses.replace(s.options, parent_run=s.parent),
                               study=study)
    s.recovery.probe = mine.probe
    # As a worker command ends (sweep.py): a shortfall with no failure of its own is 1.
    return 1 if run_trials(mine) == End.FAILED else 0
