"""Section 6 of the benchmark: comparing 200 runs of 10 epochs in pandas."""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np


def compare_speed(quick: bool) -> list[dict]:
    """Fill a fresh local store with a sweep-shaped experiment, then time compare.runs/history
    against the straightforward way (one get_metric_history call per run per metric)."""
    from mlflow.entities import Metric, Param, RunTag

    from experiments import compare, tracking
    from experiments.compare import EPOCH_METRICS

    n_runs, epochs = (40, 10) if quick else (200, 10)
    rng = np.random.default_rng(0)
    before = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        try:
            client = tracking.client()
            exp = tracking.experiment_id(client, "compare-bench")
            start = time.perf_counter()
            for i in range(n_runs):
                run = client.create_run(exp, run_name=f"trial-{i}", tags={
                    "trial": str(i), "grad_mode": "has_aux", "role": "objective",
                    "state": "COMPLETE", "sweep": "compare-bench"})
                metrics = [Metric(k, float(rng.random()), 0, e) for e in range(1, epochs + 1)
                           for k in EPOCH_METRICS]
                client.log_batch(run.info.run_id, metrics=metrics, params=[
                    Param("learning_rate", str(rng.random())), Param("epochs", str(epochs)),
                    Param("batch_size", "64")], tags=[RunTag("x", "y")])
                client.set_terminated(run.info.run_id)
            fill = time.perf_counter() - start
            ours, naive = [], []
            for _ in range(3):
                start = time.perf_counter()
                frame = compare.runs("compare-bench", client)
                compare.history("compare-bench", client)
                ours.append(time.perf_counter() - start)
                start = time.perf_counter()
                for run_id in frame["run_id"]:
                    for key in EPOCH_METRICS:
                        client.get_metric_history(run_id, key)
                naive.append(time.perf_counter() - start)
        finally:
            os.chdir(before)
    t_ours, t_naive = statistics.median(ours), statistics.median(naive)
    return [{"what": f"compare.runs + compare.history, {n_runs} runs x {epochs} epochs x "
                     f"{len(EPOCH_METRICS)} metrics (local SQLite)", "seconds": t_ours,
             "ratio vs per-run history calls": t_ours / t_naive},
            {"what": "get_metric_history per run per metric (history only)",
             "seconds": t_naive, "ratio vs per-run history calls": 1.0},
            {"what": "filling the store (not part of compare)", "seconds": fill,
             "ratio vs per-run history calls": None}]
