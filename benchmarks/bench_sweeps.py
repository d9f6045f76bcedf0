"""Sections 4-5 of the benchmark: whole sweeps run as a user runs them (subprocesses)."""

from __future__ import annotations

import datetime
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

from benchmarks import bench_common as C

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 3
THROUGHPUT_SWEEP = {
    "name": "throughput", "method": "random", "seed": 0, "pruner": {"type": "none"},
    "fixed": {"epochs": EPOCHS, "batch_size": 64, "data.download": False},
    "parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 0.01,
                                     "max": 0.3}},
}


def _run_sweep(folder: Path, sweep: dict, n_trials: int, workers: int,
               env_extra: dict | None = None) -> tuple[float, float, list]:
    """Run (or resume) a sweep of `n_trials` on `workers` in `folder` (see `run_sweep`)."""
    return run_sweep(folder, {**sweep, "n_trials": n_trials}, "--workers", str(workers),
                     env=env_extra)


def run_sweep(folder: Path, sweep: dict, *flags: str, env: dict | None = None
              ) -> tuple[float, float, list]:
    """Run (or resume) `runner.py sweep` with `flags` in `folder`, with the runner's own
    defaults (no MLFLOW_TRACKING_URI, no RUNNER_WORKERS): (wall s, start-up s, the study's
    trials). Start-up is from the command's start to its first trial's start: imports,
    data, study and MLflow set-up.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    full = {k: v for k, v in os.environ.items()
            if k not in ("MLFLOW_TRACKING_URI", "RUNNER_WORKERS")} | (env or {})
    started = datetime.datetime.now()  # Optuna's trial datetimes are naive local times
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "runner.py"), "sweep", str(path), *flags],
                   cwd=folder, env=full, check=True, capture_output=True)
    wall = time.perf_counter() - start
    storage = optuna.storages.JournalStorage(
        JournalFileBackend(str(folder / "mlruns" / "optuna" / "journal.log")))
    trials = optuna.load_study(study_name=sweep["name"], storage=storage).get_trials()
    first = min((t.datetime_start for t in trials if t.datetime_start), default=started)
    return wall, (first - started).total_seconds(), trials


def steady_rate(trials: list) -> float:
    """Trials per minute once every worker is running, summed over workers.

    For each worker (the trial's "worker" user attr): the trials it finished after its
    first, over the time from its first to its last completion. Each worker thus measures
    only whole intervals between its own completions, start-up excluded. Pooling every
    completion instead, as (n - 1) / (last - first), is right for one worker but loses an
    interval per extra worker: two workers in lockstep finish their first trials together,
    so 16 trials span 7 intervals, not 7.5, and the pooled rate overstates by 15/14.
    """
    ends: dict[str, list] = defaultdict(list)
    for t in trials:
        # Trials refused for being over the global budget end at once and did no work.
        if t.datetime_complete and t.user_attrs.get("fail_kind") != "over_budget":
            ends[t.user_attrs.get("worker", "")].append(t.datetime_complete)
    rates = []
    for times in ends.values():
        times.sort()
        span = (times[-1] - times[0]).total_seconds()
        if len(times) < 2 or span <= 0:
            return math.nan  # a worker without two completions has no rate to add
        rates.append((len(times) - 1) / span * 60)
    return sum(rates) if rates else math.nan


def throughput(quick: bool) -> list[dict]:
    n, repeats = (6, 1) if quick else (12, 3)
    cases = [("1 worker", 1, {}), ("2 workers, pinned one per core", 2, {}),
             ("2 workers, unpinned", 2, {"RUNNER_PIN_WORKERS": "0"})]
    # Warm-up: the first command of a run would otherwise also pay reading the libraries
    # from disk, which no later command (and no user's second command) pays.
    subprocess.run([sys.executable, "-c", "import mindspore, mlflow, optuna"], check=True,
                   capture_output=True)
    steady, whole, startup = defaultdict(list), defaultdict(list), defaultdict(list)
    # The cases take turns within each round, so a slow spell of the shared machine
    # lands on all of them rather than on one.
    for _ in range(repeats):
        for label, workers, env in cases:
            with tempfile.TemporaryDirectory() as tmp:
                wall, start_s, trials = _run_sweep(Path(tmp), THROUGHPUT_SWEEP, n, workers, env)
            steady[label].append(steady_rate(trials))
            whole[label].append(n / wall * 60)
            startup[label].append(start_s)
    load = C.workload(C.OFFLINE, batch=64, epochs=EPOCHS, trials=n,
                      other="random lr 0.01-0.3, one `runner.py sweep` command per repeat")
    base = cases[0][0]
    rows = []
    for label, _, _ in cases[1:]:
        rows.append(C.row(f"sweep throughput, steady state (trials/min), {label}", load,
                          "trials/min", steady[label], base, steady[base], readme=True,
                          note="per worker: trials after its first over its first-to-last "
                               "completion time, summed over workers"))
    for label, _, _ in cases[1:]:
        rows.append(C.row(f"sweep throughput, whole command (trials/min), {label}", load,
                          "trials/min", whole[label], base, whole[base],
                          readme=label.endswith("core")))
    for label, _, _ in cases:
        rows.append(C.row(f"sweep start-up: command start to first trial start, {label}",
                          load, "s", startup[label], readme=label == base))
    return rows


def _best_within(trials: list, budget: float) -> tuple[float, int]:
    """(best value, trial count) of the trials that ended within `budget` epochs.

    One worker runs trials in number order, so this is what the sweep had found when it
    had trained `budget` epochs (a trial straddling the budget is left out).
    """
    best, spent, used = -math.inf, 0, 0
    for t in sorted(trials, key=lambda t: t.number):
        spent += len(t.intermediate_values)
        if spent > budget:
            break
        used += 1
        if t.value is not None and t.state.name == "COMPLETE":
            best = max(best, t.value)
    return (best if best > -math.inf else math.nan), used


def pruning(quick: bool) -> list[dict]:
    sweep = yaml.safe_load((ROOT / "sweeps" / "lr.yaml").read_text())
    sweep["fixed"]["data.download"] = False
    n = 6 if quick else sweep["n_trials"]
    seeds = (0,) if quick else (0, 1, 2)
    epochs, best, more = defaultdict(list), defaultdict(list), defaultdict(list)
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            _, _, plain = _run_sweep(Path(tmp), {**sweep, "seed": seed,
                                                 "pruner": {"type": "none"}}, n, 1)
        budget = sum(len(t.intermediate_values) for t in plain)
        with tempfile.TemporaryDirectory() as tmp:
            # Trial i of a longer sweep is trial i of an n-trial one (one worker, seeds per
            # trial number), so one run gives both the equal-trials and equal-epochs views.
            # Resume with a larger budget until the pruned sweep has trained as many epochs.
            total, pruned = n, []
            while sum(len(t.intermediate_values) for t in pruned) < budget and total < 4 * n:
                total += n
                _, _, pruned = _run_sweep(Path(tmp), {**sweep, "seed": seed}, total, 1)
        first_n = [t for t in pruned if t.number < n]
        epochs["plain"].append(budget)
        epochs["pruned"].append(sum(len(t.intermediate_values) for t in first_n))
        best["plain"].append(_best_within(plain, budget)[0])
        best["pruned n"].append(_best_within(first_n, math.inf)[0])
        value, used = _best_within(pruned, budget)
        best["pruned epochs"].append(value)
        more["pruned"].append(used)
        more["plain"].append(len(plain))
    seeds_txt = f"sweep seeds: {', '.join(map(str, seeds))} (one run each)"
    pairs = list(zip(best["pruned epochs"], best["plain"], strict=True))
    tally = (f"pruner ahead on {sum(a > b for a, b in pairs)}, level on "
             f"{sum(a == b for a, b in pairs)}, behind on {sum(a < b for a, b in pairs)} "
             f"of {len(pairs)} seeds; a trial that would pass the budget is left out")
    equal_n = C.workload(C.OFFLINE, batch=64, epochs=EPOCHS, trials=n,
                         other=f"sweeps/lr.yaml (tpe), {seeds_txt}")
    equal_e = C.workload(C.OFFLINE, batch=64, trials=None,
                         other=f"sweeps/lr.yaml (tpe), as many epochs as {n} trials without "
                               f"pruning trained, {seeds_txt}")
    same_configs = ("TPE's first 10 trials are random with the same per-trial seeds in both "
                    "sweeps, so equal trial counts sample nearly the same configs")
    return [
        C.row(f"pruning, equal trials: epochs trained by {n} trials, median pruner",
              equal_n, "epochs", epochs["pruned"], "no pruner", epochs["plain"], readme=True),
        C.row(f"pruning, equal trials: best test_accuracy of {n} trials, median pruner",
              equal_n, "accuracy", best["pruned n"], "no pruner", best["plain"],
              note=same_configs),
        C.row("pruning, equal epochs: best test_accuracy, median pruner", equal_e,
              "accuracy", best["pruned epochs"], "no pruner", best["plain"], readme=True,
              note=tally),
        C.row("pruning, equal epochs: trials tried, median pruner", equal_e, "trials",
              more["pruned"], "no pruner", more["plain"], readme=True),
    ]
