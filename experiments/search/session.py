"""One process's sweep, top-down: refuse a study that asks another question; load the
data; open the store and the study; recover what dead processes left; run the trials
here or in worker processes; record the best on the parent run, whatever ended the sweep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from experiments.core import config as cfg
from experiments.core import devices
from experiments.core.data import load
from experiments.core.train import Prepared
from experiments.core.train import forkable as forkable_core
from experiments.runtime import infra, interrupts, outage, progress, workers
from experiments.search import liveness as lv
from experiments.search import parent as pr
from experiments.search import story, trial_runs, warm_trials
from experiments.search import study as st
from experiments.search import trials as tr
from experiments.search.objective import TrialRunner
from experiments.search.options import SweepOptions
from experiments.search.storage import open_storage
from experiments.search.sweepfile import SweepSpec
from experiments.tracking import store as tracking_store
from experiments.tracking import ui
from experiments.tracking.store import MLRUNS, client
from experiments.tracking.tracked_fit import TrackContext

# The command a worker process runs (forked workers need none).
RUNNER = Path(__file__).resolve().parents[2] / "runner.py"
FALLBACK_ENV = "RUNNER_DATA_FALLBACK"  # set for worker processes once the parent fell back


@dataclass
class Session:
    """One process's view of a sweep, once the store and the study are open."""

    options: SweepOptions
    spec: SweepSpec
    store_url: str
    study: Any
    recovery: Any
    client: Any
    mnist: Any
    parent: str = ""


def run(options: SweepOptions, spec: SweepSpec) -> tuple[str, str]:
    """Run (or resume) the checked sweep; returns the summary to print and how it ended."""
    store_url = options.storage_url()
    if options.parent_run is None:
        for note in spec.notes:  # program and command first: they are not run
            if note.startswith(("program", "command")):
                progress.say(f"{spec.path}: {note}")
    recovery = tr.Recovery()
    # A study of this name that asks another question is refused before anything is written.
    store = open_storage(store_url, MLRUNS, recovery.stale, create=False)
    changed = st.check(spec, store, store_url, options.allow_change) if store else []
    warm_trials.check(spec, store, store_url)
    config = cfg.build(spec.fixed)
    if options.parent_run is None:  # a worker's device was checked by its parent
        devices.check(config.device, options.device_ids or (config.device_id,))
    mnist = load(config.data.path, config.data.download, progress.say,
                 fell_back=os.environ.get(FALLBACK_ENV, "") if options.parent_run else "")
    session = Session(options, spec, store_url, None, recovery, client(), mnist)
    recovery.close_runs = trial_runs.close_runs(session.client, spec.experiment)
    store = store or open_storage(store_url, MLRUNS, recovery.stale)
    session.study = st.open_study(spec, store)
    devices.use(config.device, config.device_id)
    if options.parent_run is not None:  # a worker process of a parent
        session.parent = options.parent_run
        if options.pin_cpu is not None:
            os.sched_setaffinity(0, {options.pin_cpu})
        return "", _run_trials(session)
    _recover(session)
    _resuming(session)
    if spec.warm_start is not None:
        warm_trials.enqueue(session.study, spec, store, progress.say)
    session.parent = pr.parent_run(session.client, spec, pr.sweep_text(options.path), changed)
    story.update(session.client, session.parent, session.study, spec, plots=False)
    end, unclosed = "failed", ""
    try:
        end = _run_trials(session)
    except KeyboardInterrupt:
        if not _met(session):
            end = "interrupted"
            raise
        end = "budget"  # every trial counted before the signal: the sweep is done
    except infra.InfrastructureDown:
        end = "infrastructure"
        raise
    finally:
        unclosed = _finish(session, end)
    if unclosed:  # the trials are done, but the parent run still says RUNNING
        raise infra.InfrastructureDown(f"{unclosed}; the sweep's parent run could not be "
                                       "closed", 1)
    if interrupts.requested() and end in ("budget", "target"):
        progress.say("Ctrl-C came once every trial had counted: nothing was cut short")
    experiment_id = session.client.get_run(session.parent).info.experiment_id
    # Filtered to this sweep's runs where other sweeps are, or may come (a W&B project).
    shared = {r.data.tags.get("sweep") for r in pr.parents(session.client, experiment_id)}
    alone = shared == {spec.name} and spec.experiment == spec.name
    link = ui.link(ui.base_url(), experiment_id, metric=spec.metric, goal=spec.goal,
                   sweep=None if alone else spec.name)
    return pr.summary(session.study, spec, session.parent, end, link), end


def _met(s: Session) -> bool:
    """Whether the budget is met, as far as the storage can say."""
    try:
        return len(tr.finished(s.study, s.spec)) >= tr.budget(s.spec)
    except Exception:
        return False


def _finish(s: Session, end: str) -> str:
    """Close what the store did not let close, and the parent run; '' or what broke. An
    outage at the end is waited out as one mid-sweep, unless the user is stopping it; with
    the store or the storage down for good the parent run stays as it was (a rerun
    finalises it)."""
    interrupts.waiting_for("the sweep's parent run to be brought up to date and closed")
    with interrupts.shielded():
        while True:
            try:
                trial_runs.close_orphans(s.client, s.study, s.spec.experiment)
                pr.finalize(s.client, s.parent, s.study, s.spec, end)
                return ""
            except Exception as exc:
                broke = infra.what_broke(exc)
                if not broke:
                    raise
                if end == "interrupted" or not outage.passes(broke) or not outage.ride_out(
                        broke, s.recovery.probe, progress.say):
                    return broke


def _recover(s: Session) -> None:
    """What dead processes left: RUNNING trials, and runs of finished trials."""
    recovered = tr.recover(s.study, s.recovery)
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
    b = tr.Budget.of(s.spec)
    counted = sum(b.counts(t) for t in trials)
    again = [t.number for t in trials if t.state == TrialState.WAITING and "retry_of" in
             t.user_attrs]
    progress.say(f"resuming sweep '{s.spec.name}': {counted} of {b.limit} trials counted"
                 + (f"; {len(again)} cut short, queued again" if again else "")
                 + ("; the budget is met: nothing to train" if counted >= b.limit else ""))


@contextmanager
def _watch(s: Session) -> Iterator[Callable[[], None]]:
    """The parent of workers draws the bar and prints each trial's line, from the study:
    one process writes to the terminal, so the workers' lines cannot tear its bar."""
    seen = {t.number for t in tr.finished(s.study, s.spec)}
    bar = progress.trial_bar(tr.budget(s.spec), len(seen))

    def tick() -> None:
        for t in tr.finished(s.study, s.spec):
            if t.number not in seen:
                seen.add(t.number)
                bar.update(1)
                progress.say(pr.trial_line(t, s.spec))

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
    st.after_fork(s.study)
    study = st.open_study(s.spec, open_storage(s.store_url, MLRUNS, s.recovery.stale))
    options = dataclasses.replace(s.options, parent_run=s.parent)
    end = _run_trials(dataclasses.replace(s, options=options, study=study))
    # As a worker command ends (sweep.py): a shortfall with no failure of its own is 1.
    return 1 if end == "failed" else 0


def _probe(s: Session) -> None:
    """Ask the tracking store and the study storage something small: raises while
    either is down."""
    s.client.search_experiments(max_results=1)
    s.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def _run_trials(s: Session) -> str:
    """Trials here, or in worker processes; returns how the sweep ended."""
    spec, options = s.spec, s.options
    s.recovery.probe = lambda: _probe(s)  # this process's store and study
    deadline = time.time() + spec.timeout_s if spec.timeout_s else None
    n, ids = options.worker_count, options.device_ids
    cpu = cfg.build(spec.fixed).device == "CPU"
    if options.workers is None and not ids:
        # auto: one per core on CPU (one card without --devices), and no more workers than
        # trials left to run (a worker without one would wait).
        n = max(1, min(n if cpu else 1, tr.budget(spec) - len(tr.finished(s.study, spec))))
    if n > 1 and options.parent_run is None:
        recover = lambda: tr.recover(s.study, s.recovery)  # noqa: E731
        forked = (tracking_store.forkable(s.client) and st.forkable(s.study) and not ids
                  and forkable_core() and lv.recognisable())

        def before_fork() -> None:  # no pooled connection of this process crosses a fork
            tracking_store.before_fork(s.client)
            st.before_fork(s.study)

        interrupts.waiting_for(f"the {n} workers to stop their trials at the next step and "
                               "close their runs as KILLED")
        with _watch(s) as tick:
            if forked:
                died = workers.fork_workers(n, lambda i: _worker(s), recover, tick,
                                            progress.say, cpu, before_fork)
            else:
                env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
                if s.mnist.fallback_reason:  # the workers use the sample at once
                    env[FALLBACK_ENV] = s.mnist.fallback_reason
                died = workers.run_workers(
                    lambda i, core: options.worker_argv(RUNNER, s.store_url, s.parent,
                                                        ids[i] if ids else None, core),
                    n, env, recover, tick, progress.say, cpu)
        # Workers stop at the budget or the deadline; a shortfall without a deadline
        # means some died (the others may have made up for them).
        if len(tr.finished(s.study, spec)) >= tr.budget(spec):
            return "budget"
        if tr.reached(s.study.get_trials(deepcopy=False), spec):
            return "target"
        interrupts.check()  # short of the budget because of a Ctrl-C
        broke = [said for code, said in died if code == workers.EXIT_INFRA]
        if broke:
            raise infra.InfrastructureDown(
                next((b for b in broke if b), "the store, its disk or the network failed"),
                infra.MAX_IN_A_ROW)
        return "workers died" if died else "timeout" if deadline else "failed"
    shown = options.parent_run is None
    bar = progress.trial_bar(tr.budget(spec), len(tr.finished(s.study, spec)), enabled=shown)

    def done(t: Any) -> None:
        trial_runs.tag_trial_runs(s.client, t)
        bar.update(1)
        progress.say(pr.trial_line(t, spec))
        story.update(s.client, s.parent, s.study, spec)

    interrupts.waiting_for("the running trial to stop at its next step and close its run "
                           "as KILLED")
    ctx = TrackContext(s.client, s.mnist, Prepared.from_mnist(s.mnist), spec.experiment,
                       s.parent)
    runner = TrialRunner(spec, ctx)
    try:
        return tr.work(s.study, spec, runner.objective, done, s.recovery, deadline)
    finally:
        bar.close()
