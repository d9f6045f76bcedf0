"""Sections 4-5 of the benchmark: whole sweeps run as a user runs them (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

THROUGHPUT_SWEEP = {
    "name": "throughput", "method": "random", "seed": 0, "pruner": {"type": "none"},
    "fixed": {"epochs": 3, "batch_size": 64, "data.download": False},
    "parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 0.01,
                                     "max": 0.3}},
}


def _run_sweep(folder: Path, sweep: dict, n_trials: int, workers: int,
               env_extra: dict | None = None) -> tuple[float, list]:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({**sweep, "n_trials": n_trials}))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | (env_extra or {})
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "runner.py"), "sweep", str(path), "--workers",
                    str(workers)], cwd=folder, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(
        JournalFileBackend(str(folder / "mlruns" / "optuna" / "journal.log")))
    return wall, optuna.load_study(study_name=sweep["name"], storage=storage).get_trials()


def _steady_rate(trials: list) -> float:
    """Trials per minute between the first and the last completion (start-up excluded)."""
    ends = sorted(t.datetime_complete for t in trials if t.datetime_complete)
    if len(ends) < 2:
        return float("nan")
    return (len(ends) - 1) / (ends[-1] - ends[0]).total_seconds() * 60


def throughput(quick: bool) -> list[dict]:
    n = 6 if quick else 16
    rows = []
    cases = [("1 worker", 1, {}), ("2 workers, one core each", 2, {}),
             ("2 workers, unpinned", 2, {"RUNNER_PIN_WORKERS": "0"})]
    base = None
    for label, workers, env in cases:
        with tempfile.TemporaryDirectory() as tmp:
            wall, trials = _run_sweep(Path(tmp), THROUGHPUT_SWEEP, n, workers, env)
        rate = _steady_rate(trials)
        base = base or rate
        rows.append({"workers": label, "trials": n, "wall s": wall,
                     "trials/min (whole command)": n / wall * 60,
                     "trials/min (steady)": rate, "ratio vs 1 worker": rate / base})
    return rows


def pruning(quick: bool) -> list[dict]:
    sweep = yaml.safe_load((ROOT / "sweeps" / "lr.yaml").read_text())
    sweep["fixed"]["data.download"] = False
    n = 6 if quick else sweep["n_trials"]
    rows = []
    base = None
    for label, pruner in (("median pruner", sweep["pruner"]), ("no pruner", {"type": "none"})):
        with tempfile.TemporaryDirectory() as tmp:
            wall, trials = _run_sweep(Path(tmp), {**sweep, "pruner": pruner}, n, 1)
        epochs = sum(len(t.intermediate_values) for t in trials)
        best = max((t.value for t in trials if t.value is not None), default=float("nan"))
        base = base or (epochs, wall)
        rows.append({"sweep": f"lr.yaml, {label}", "trials": n, "epochs trained": epochs,
                     "pruned": sum(t.state.name == "PRUNED" for t in trials),
                     "best test_accuracy": best, "wall s": wall})
    no_pruner = rows[1]
    for row in rows:
        row["epochs vs no pruner"] = row["epochs trained"] / no_pruner["epochs trained"]
    return rows
