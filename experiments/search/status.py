"""`runner.py status SWEEP.yaml`: where a sweep stands, read from its study, writing nothing.

Budget counted and left, trials by state, each running trial with its worker, host, age
and heartbeat, the best trial so far, and an ETA from the median counted trial's time.
"""

from __future__ import annotations

import statistics
import time

from experiments.runtime.progress import span
from experiments.search.spec import sweepfile
from experiments.search.spec.options import SweepOptions, masked


def status(options: SweepOptions) -> str:
    """The report to print; SweepError for a sweep with no study in the storage."""
    spec = options.check()
    from experiments.search.spec.metrics import describe, pareto, values_text
    from experiments.search.spec.space import shown as show_value
    from experiments.search.spec.space import values_of
    from experiments.search.study import internals, liveness
    from experiments.search.study import study as studies
    from experiments.search.study.storage import open_storage
    from experiments.search.trials import ablation
    from experiments.search.trials.budget import Budget, ranked, reached, tally
    from experiments.tracking.store import MLRUNS

    url = options.storage_url()
    shown = masked(url)
    store = open_storage(url, MLRUNS, lambda study, t: None, create=False)
    if store is not None:  # a file that asks another question is refused, as `sweep` does
        studies.check(spec, store, url)
    study = studies.existing(spec, store) if store is not None else None
    if study is None:
        raise sweepfile.SweepError(f"{spec.path}: sweep '{spec.name}' has never run here "
                                   f"(no study of that name in {shown})")
    spec = studies.budget_of(spec, study, options.n_trials)
    trials = study.get_trials(deepcopy=False)
    budget = Budget.of(spec)
    counted = budget.counted(trials)
    lines = [f"sweep '{spec.name}' ({shown}): {budget.said(len(counted))}, "
             f"{max(0, budget.limit - len(counted))} left"
             + ("; a trial reached metric.target" if reached(trials, spec) else "")]
    lines.append("trials: " + (tally(trials, budget) if trials else "-"))
    running = [t for t in trials if t.state.name == "RUNNING"]
    beats = internals.heartbeat_ages(study)
    for t in running:
        host, _, pid = t.user_attrs.get("worker", "?:?").rpartition(":")
        alive = "alive" if liveness.alive(t.user_attrs.get("worker")) else "gone"
        own = t.system_attrs.get(internals.BEAT)  # the runner's beats (Optuna's gRPC proxy)
        beat = f", heartbeat {beats[t.number]:.0f}s ago" if t.number in beats else \
            f", beat {time.time() - own:.0f}s ago" if isinstance(own, float | int) else \
            (", no heartbeat (journal storage)" if internals.is_journal(study) else
             ", no heartbeat yet")
        lines.append(f"  running: trial {t.number} on {host or '?'} pid {pid or '?'} ({alive}), "
                     f"started {liveness.age_s(t):.0f}s ago{beat}")
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete and spec.multi:
        front = ranked(pareto(trials, spec.metrics), spec)
        lines.append(f"Pareto front so far ({describe(spec.metrics)}): "
                     + "; ".join(f"trial {t.number} {values_text(t.values, spec.metrics)}"
                                 for t in front))
    elif complete:
        best = study.best_trial
        values = "  ".join(f"{k}={show_value(v)}" for k, v in values_of(best).items())
        lines.append(f"best so far: trial {best.number}, {spec.metric}={best.value:.4f}  "
                     f"{values}")
    lines += ablation.lines(trials, spec)
    lines.append(_eta(counted, running, budget.limit, _rerun_workers(spec)))
    return "\n".join(lines)


def _eta(counted: list, running: list, limit: int, rerun: int) -> str:
    """From the median counted trial: over the workers at work, or, with none, over the
    workers a rerun starts (it said '/ 1 worker' of a sweep that had run two: review)."""
    left = max(0, limit - len(counted))
    times = [t.duration.total_seconds() for t in counted if t.duration]
    if not left:
        return "ETA: done"
    if not times:
        return "ETA: unknown until a trial is counted"
    workers = len(_workers(counted, running))
    what = "ETA" if workers else "ETA of a rerun"
    workers = workers or max(1, min(rerun, left))
    seconds = statistics.median(times) * left / workers
    return (f"{what}: about {span(seconds)} ({left} trial{'s' * (left > 1)} left x median "
            f"{statistics.median(times):.1f}s / {workers} worker{'s' * (workers > 1)})")


def _rerun_workers(spec: sweepfile.SweepSpec) -> int:
    """How many workers the same `sweep` command starts: RUNNER_WORKERS, or one per usable
    core on CPU and one on a card (as execution.run_trials decides)."""
    from experiments.core import config as cfg
    from experiments.runtime.workers import usable_cores
    from experiments.search.spec.options import default_workers

    return default_workers() or (len(usable_cores()) if cfg.build(spec.fixed).device == "CPU"
                                 else 1)


def _workers(counted: list, running: list) -> set[str]:
    """Workers at work: those running a trial, and those of the latest trials whose process
    is still there (between two trials a worker runs none; other hosts' count as there)."""
    from experiments.search.study import liveness

    recent = sorted(counted, key=lambda t: t.number)[-8:]
    named = [t.user_attrs.get("worker") for t in [*running, *recent]]
    return {w for w in named if w and liveness.alive(w)}


