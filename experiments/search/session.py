"""One process's sweep, top-down: refuse a study that asks another question; load the
data; open the store and the study; recover what dead processes left; run the trials
(execution.py: here, or in worker processes); record the best on the parent run, whatever
ended the sweep.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from experiments.core import config as cfg
from experiments.core import devices
from experiments.core.data import Mnist
from experiments.core.task import Task
from experiments.core.task_checks import (
    TaskData,
    check,
    check_apart,
    classes_of,
    random_note,
)
from experiments.core.train import Prepared
from experiments.runtime import infra, interrupts, outage, progress
from experiments.search import execution
from experiments.search.execution import FALLBACK_ENV
from experiments.search.runs import parent, story, trial_runs
from experiments.search.spec.options import SweepOptions
from experiments.search.spec.sweepfile import SweepSpec
from experiments.search.study import study as studies
from experiments.search.study.storage import open_storage
from experiments.search.trials import warm_queue
from experiments.search.trials.budget import Budget
from experiments.search.trials.loop import End, Recovery, recover
from experiments.tracking import ui, views
from experiments.tracking.store import MLRUNS, client
from experiments.tracking.tracked_fit import prepare

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient


@dataclass(frozen=True, kw_only=True)
class Session:
    """One process's view of a sweep, once the store and the study are open. Its budget is
    computed once (a grid's enumerates the grid) and handed on."""

    options: SweepOptions
    spec: SweepSpec
    budget: Budget
    store_url: str
    study: optuna.Study
    recovery: Recovery
    client: MlflowClient
    mnist: Mnist | TaskData  # the data every trial trains on
    task: Task
    parent: str = ""

    def probe(self) -> None:
        """Ask the tracking store and the study storage something small: raises while
        either is down (an outage is waited out by asking, runtime/outage.py)."""
        self.client.search_experiments(max_results=1)
        self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def run(options: SweepOptions, spec: SweepSpec) -> tuple[str, End]:
    """Run (or resume) the checked sweep; returns the summary to print and how it ended."""
    store_url = options.storage_url()
    if options.parent_run is None:
        for note in spec.notes:  # program and command first: they are not run
            if note.startswith(("program", "command")):
                progress.say(f"{spec.path}: {note}")
        for warning in spec.warnings:  # W&B's deprecation notes: the file runs as written
            progress.say(f"{spec.path}: warning: {warning}")
    recovery = Recovery()
    # A study of this name that asks another question is refused before anything is written.
    store = open_storage(store_url, MLRUNS, recovery.stale, create=False)
    changed = studies.check(spec, store, store_url, options.allow_change) if store else []
    warm_queue.check(spec, store, store_url)
    config = cfg.build(spec.fixed)
    if options.parent_run is None:  # a worker's device was checked by its parent
        devices.check(config.device, options.device_ids or (config.device_id,))
    config, task, mnist = prepare(
        config, progress.say,
        fell_back=os.environ.get(FALLBACK_ENV, "") if options.parent_run else "")
    if task.file.name not in cfg.BUILT_IN_TASKS:  # the built-in ones are tested
        if options.parent_run is None:
            # In a process of its own: one that ran a graph can no longer fork workers.
            task = check_apart(task, config, mnist.input_shape, classes_of(mnist))
            if task.random:
                progress.say(random_note(task))
        else:  # a worker never forks
            task = check(task, config, Prepared.of(mnist).test_x, classes_of(mnist))
    interrupts.check()  # a Ctrl-C while the task was read: nothing is written yet
    tracking = client()
    if options.parent_run is None:
        # The tracking store answers before the study is created: a server down at the
        # start left a study of no trials, which `status` then showed as begun (review).
        tracking.search_experiments(max_results=1)
    recovery.close_runs = trial_runs.close_runs(tracking, spec.experiment)
    store = store or open_storage(store_url, MLRUNS, recovery.stale)
    session = Session(options=options, spec=spec, budget=Budget.of(spec), store_url=store_url,
                      study=studies.open_study(spec, store), recovery=recovery,
                      client=tracking, mnist=mnist, task=task,
                      parent=options.parent_run or "")
    recovery.probe = session.probe
    devices.use(config.device, config.device_id)
    if options.parent_run is not None:  # a worker process of a parent
        if options.pin_cpu is not None:
            os.sched_setaffinity(0, {options.pin_cpu})
        return "", execution.run_trials(session)
    _recover(session)
    _resuming(session)
    if spec.warm_start is not None:
        warm_queue.enqueue(session.study, spec, store, progress.say)
    session = dataclasses.replace(session, parent=parent.parent_run(
        session.client, spec, parent.sweep_text(options.path), changed))
    recovery.probe = session.probe
    story.update(session.client, session.parent, session.study, spec, session.budget,
                 plots=False)
    end, unclosed = End.FAILED, ""
    try:
        end = execution.run_trials(session)
    except KeyboardInterrupt:
        if not _met(session):
            end = End.INTERRUPTED
            raise
        end = End.BUDGET  # every trial counted before the signal: the sweep is done
    except infra.InfrastructureDown:
        end = End.INFRASTRUCTURE
        raise
    finally:
        unclosed = _finish(session, end)
    if unclosed:  # the trials are done, but the parent run still says RUNNING
        raise infra.InfrastructureDown(f"{unclosed}; the sweep's parent run could not be "
                                       "closed", 1)
    if interrupts.requested() and end.complete:
        progress.say("Ctrl-C came once every trial had counted: nothing was cut short")
    return parent.summary(session.study, spec, session.budget, session.parent, end,
                          _links(session)), end


def _links(s: Session) -> list[str]:
    """The UI's pages of the sweep: its runs with their numbers, and with an ablation, the
    runs grouped by grad mode (views kept on the experiment by parent.parent_run)."""
    experiment_id = s.client.get_run(s.parent).info.experiment_id
    return [views.link(ui.base_url(), experiment_id, key) for key in parent.ui_views(s.spec)]


def _met(s: Session) -> bool:
    """Whether the budget is met, as far as the storage can say."""
    try:
        return s.budget.met(s.study)
    except Exception:
        return False


def _finish(s: Session, end: End) -> str:
    """Close what the store did not let close, and the parent run; '' or what broke. An
    outage at the end is waited out as one mid-sweep, unless the user is stopping it or
    the sweep stopped because it was already waited out (a second wait doubled the stop,
    said `waiting:` twice, and could say `back` of a sweep that then stopped: review); with
    the store or the storage down for good the parent run stays as it was (a rerun
    finalises it)."""
    interrupts.waiting_for("the sweep's parent run to be brought up to date and closed")
    with interrupts.shielded():
        while True:
            try:
                trial_runs.close_orphans(s.client, s.study, s.spec.experiment)
                parent.finalize(s.client, s.parent, s.study, s.spec, s.budget, end)
                return ""
            except Exception as exc:
                broke = infra.what_broke(exc)
                if not broke:
                    raise
                if end in (End.INTERRUPTED, End.INFRASTRUCTURE) or not outage.passes(broke) \
                        or not outage.ride_out(
                        broke, s.probe, progress.say):
                    return broke


def _recover(s: Session) -> None:
    """What dead processes left: RUNNING trials, and runs of finished trials."""
    recovered = recover(s.study, s.recovery)
    if recovered:
        progress.say(f"{recovered} trial(s) left RUNNING by a dead process: marked FAIL, "
                     "their MLflow runs KILLED, their params queued for one retry")
    orphans = trial_runs.close_orphans(s.client, s.study, s.spec.experiment)
    if orphans:
        progress.say(f"{orphans} MLflow run(s) of finished trials left RUNNING by a process "
                     "that is gone: closed as KILLED")


def _resuming(s: Session) -> None:
    """What a rerun finds: the budget counted so far, and the trials it will train again."""
    trials = s.study.get_trials(deepcopy=False)
    if not trials:
        return
    counted = len(s.budget.counted(trials))
    again = [t.number for t in trials if t.state == TrialState.WAITING and "retry_of" in
             t.user_attrs]
    progress.say(f"resuming sweep '{s.spec.name}': {s.budget.said(counted)}"
                 + (f"; {len(again)} cut short, queued again" if again else "")
                 + ("; the budget is met: nothing to train" if counted >= s.budget.limit
                    else ""))
