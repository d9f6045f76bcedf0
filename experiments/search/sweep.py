"""`runner.py sweep`: the flags and the file are checked first, before any heavy import,
so bad input costs nothing and writes nothing; the sweep itself runs in session.py.
"""

from __future__ import annotations

from experiments.search.spec import sweepfile
from experiments.search.spec.options import SweepIncomplete, SweepOptions


def run_sweep(options: SweepOptions) -> str:
    """Run (or resume) the sweep; returns what to print: the summary, or the dry run.
    Raises SweepIncomplete when worker processes died before the budget was met."""
    spec = options.check()
    if options.dry_run:
        return _dry_run(options, spec)
    from experiments.search import session  # MindSpore, MLflow, Optuna: after the checks
    from experiments.search.trials.loop import End

    summary, end = session.run(options, spec)
    if end == End.FAILED:
        raise SweepIncomplete("the sweep ended short of its budget although no worker failed "
                              "(another process on the same storage?); rerun the same command "
                              "to resume")
    if end == End.WORKERS_DIED:
        # Not "their trials are queued again": a worker may die after its trial counted,
        # or before a grid trial had its point (the review saw both).
        raise SweepIncomplete("worker processes died before the budget was met; nothing "
                              "finished is lost, and a trial they cut short trains again: "
                              "rerun the same command to resume")
    return summary


def _dry_run(options: SweepOptions, spec: sweepfile.SweepSpec) -> str:
    """Everything the run checks first (the data folder, a study that asks another
    question), then the sweep as understood and its first configs; nothing is written."""
    from experiments.core import config as cfg
    from experiments.core import devices
    from experiments.core.data import check_path
    from experiments.search.dryrun import describe
    from experiments.search.study import study as studies
    from experiments.search.study.storage import open_storage
    from experiments.search.trials import warm_queue
    from experiments.tracking.store import MLRUNS

    config = cfg.build(spec.fixed)
    check_path(config.data.path, config.data.download)
    devices.check(config.device, options.device_ids or (config.device_id,))
    url = options.storage_url()
    store = open_storage(url, MLRUNS, lambda study, t: None, create=False)
    changed = studies.check(spec, store, url, options.allow_change) if store else []
    warm_queue.check(spec, store, url)
    existing = studies.existing(spec, store) if store else None
    return describe(spec, existing, changed, store)
