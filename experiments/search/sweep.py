"""`runner.py sweep`: a study whose every trial trains and is recorded, start to summary.

Top-down: check the file and the flags; refuse a study that asks another question; load
the data; open the store and the study; recover what dead processes left; then run the
trials here or in worker processes; finally record the best on the parent run, whatever
ended the sweep. Heavy imports (MindSpore, MLflow, Optuna) come after the checks, so bad
input costs nothing and writes nothing.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

from experiments.core import config as cfg
from experiments.core.config import ConfigError
from experiments.runtime import interrupts, progress
from experiments.search import sweepfile

STORAGE_PREFIXES = ("postgresql://", "postgresql+psycopg2://", "mysql://", "sqlite:///",
                    "journal:")


class SweepIncomplete(RuntimeError):
    """The sweep stopped short of its budget for a reason other than the user's."""


@dataclass(frozen=True)
class SweepOptions:
    """The sweep command's flags."""

    path: str
    sets: tuple[str, ...] = ()
    n_trials: int | None = None
    workers: int = 1
    storage: str | None = None
    dry_run: bool = False
    allow_change: bool = False
    parent_run: str | None = None  # set for the worker processes of a parent
    pin_cpu: int | None = None

    def check(self) -> sweepfile.SweepSpec:
        """The sweep file with --set and --n-trials applied; ConfigError/SweepError."""
        spec = sweepfile.load(self.path, cfg.parse_overrides(list(self.sets)))
        if self.n_trials is not None:
            if self.n_trials < 1:
                raise ConfigError(f"--n-trials: expected an integer >= 1, got {self.n_trials}")
            spec = dataclasses.replace(spec, n_trials=self.n_trials)
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"--workers: expected an integer from 1 to 64, got {self.workers}")
        if self.storage and not self.storage.startswith(STORAGE_PREFIXES):
            raise ConfigError(f"--storage: expected a URL starting with "
                              f"{', '.join(STORAGE_PREFIXES)}, got {self.storage!r}")
        return spec

    def worker_argv(self) -> list[str]:
        """What a worker process is told: the same file, --set and budget."""
        argv = [self.path, *(["--n-trials", str(self.n_trials)] if self.n_trials else [])]
        return argv + [a for item in self.sets for a in ("--set", item)]


@dataclass
class _Session:
    """One process's view of a sweep, once the store and the study are open."""

    options: SweepOptions
    spec: sweepfile.SweepSpec
    store_url: str
    study: Any
    recovery: Any
    client: Any
    mnist: Any
    parent: str = ""


def run_sweep(options: SweepOptions) -> str:
    """Run (or resume) the sweep; returns what to print: the summary, or the dry run."""
    spec = options.check()
    if options.dry_run:
        from experiments.search.dryrun import describe

        return describe(spec)
    from experiments.search import study as st
    from experiments.search import trials as tr
    from experiments.tracking.store import MLRUNS

    store_url = options.storage or f"journal:{(MLRUNS / 'optuna' / 'journal.log').resolve()}"
    recovery = tr.Recovery()
    # A study of this name that asks another question is refused before anything is written.
    store = st.storage(store_url, MLRUNS, recovery.stale, create=False)
    changed = st.check(spec, store, options.allow_change) if store is not None else []
    config = cfg.build(spec.fixed)
    from experiments.core.data import load
    from experiments.search.workers import FALLBACK_ENV

    mnist = load(config.data.path, config.data.download, progress.say,
                 fell_back=os.environ.get(FALLBACK_ENV, "") if options.parent_run else "")
    from experiments.search import parent as pr
    from experiments.search import trial_runs
    from experiments.tracking.store import client

    session = _Session(options, spec, store_url, None, recovery, client(), mnist)
    recovery.close_runs = trial_runs.close_runs(session.client)
    session.study = st.open_study(spec, store or st.storage(store_url, MLRUNS, recovery.stale))
    if options.parent_run is not None:  # a worker process of a parent
        session.parent = options.parent_run
        if options.pin_cpu is not None:
            os.sched_setaffinity(0, {options.pin_cpu})
        _run_trials(session)
        return ""
    _recover(session)
    session.parent = pr.parent_run(session.client, spec, pr.sweep_text(options.path), changed)
    end = "failed"
    try:
        end = _run_trials(session)
    except KeyboardInterrupt:
        end = "interrupted"
        raise
    finally:
        with interrupts.shielded():
            pr.finalize(session.client, session.parent, session.study, spec, end)
    if end == "workers died":
        raise SweepIncomplete("worker processes died before the budget was met; their trials "
                              "are marked FAIL and queued for a retry: rerun the same command "
                              "to resume")
    return pr.summary(session.study, spec, session.parent, end)


def _recover(s: _Session) -> None:
    """What dead processes left: RUNNING trials, and runs of finished trials."""
    from experiments.search import trial_runs
    from experiments.search import trials as tr

    recovered = tr.recover(s.study, s.recovery)
    if recovered:
        progress.say(f"{recovered} trial(s) left RUNNING by a dead process: marked FAIL, "
                     "their MLflow runs KILLED, their params queued for one retry")
    orphans = trial_runs.close_orphans(s.client, s.study)
    if orphans:
        progress.say(f"{orphans} MLflow run(s) of finished trials left RUNNING by a process "
                     "that is gone: closed as KILLED")


def _run_trials(s: _Session) -> str:
    """Trials here, or in worker processes; returns how the sweep ended."""
    from experiments.core.train import Prepared
    from experiments.search import parent as pr
    from experiments.search import trial_runs
    from experiments.search import trials as tr
    from experiments.search.objective import TrialRunner
    from experiments.tracking.tracked_fit import TrackContext

    spec, options = s.spec, s.options
    deadline = time.time() + spec.timeout_s if spec.timeout_s else None
    if options.workers > 1 and options.parent_run is None:
        from experiments.search.workers import run_workers

        died = run_workers(options.workers, options.worker_argv(), s.parent, s.store_url,
                           s.mnist.fallback_reason, lambda: tr.recover(s.study, s.recovery))
        # Workers stop at the budget or the deadline; a shortfall without a deadline
        # means some died (the others may have made up for them).
        return ("budget" if len(tr.finished(s.study)) >= tr.budget(spec)
                else "workers died" if died else "timeout" if deadline else "failed")
    shown = options.parent_run is None
    bar = progress.trial_bar(tr.budget(spec), len(tr.finished(s.study)), enabled=shown)

    def done(t: Any) -> None:
        trial_runs.tag_trial_runs(s.client, t)
        bar.update(1)
        progress.say(pr.trial_line(t, spec.metric))

    ctx = TrackContext(s.client, s.mnist, Prepared.from_mnist(s.mnist), spec.name, s.parent)
    runner = TrialRunner(spec, ctx, show_progress=shown)
    try:
        return tr.work(s.study, spec, runner.objective, done, s.recovery, deadline)
    finally:
        bar.close()
