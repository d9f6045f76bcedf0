"""`runner.py sweep`: the flags and the file are checked first, before any heavy import,
so bad input costs nothing and writes nothing; the sweep itself runs in session.py.
"""

from __future__ import annotations

from experiments.search.options import SweepIncomplete, SweepOptions


def run_sweep(options: SweepOptions) -> str:
    """Run (or resume) the sweep; returns what to print: the summary, or the dry run.
    Raises SweepIncomplete when worker processes died before the budget was met."""
    spec = options.check()
    if options.dry_run:
        from experiments.search.dryrun import describe

        return describe(spec)
    from experiments.search import session  # MindSpore, MLflow, Optuna: after the checks

    summary, end = session.run(options, spec)
    if end == "workers died":
        raise SweepIncomplete("worker processes died before the budget was met; their trials "
                              "are marked FAIL and queued for a retry: rerun the same command "
                              "to resume")
    return summary

