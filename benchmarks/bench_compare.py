"""Section 6 of the benchmark: comparing 200 runs of 10 epochs in pandas."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from benchmarks import bench_common as C


def compare_speed(quick: bool) -> list[dict]:
    """Fill a fresh local store with a sweep-shaped experiment, then time compare.runs/history
    against the straightforward way (one get_metric_history call per run per metric)."""
    # Imported here, not at the top: mlflow and pandas take seconds to import.
    from mlflow.entities import Metric, Param, RunTag

    from experiments.search import compare
    from experiments.search.compare import EPOCH_METRICS
    from experiments.tracking import store

    n_runs, epochs, repeats = (40, 10, 2) if quick else (200, 10, 3)
    rng = np.random.default_rng(0)
    before = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        try:
            client = store.client()
            exp = store.experiment_id(client, "compare-bench")
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
            # The first call of each also pays imports and SQLAlchemy's statement
            # compilation, which later calls in a session do not: it is left out below.
            def ours() -> None:
                compare.runs("compare-bench", client)
                compare.history("compare-bench", client)

            def naive() -> None:
                for run_id in compare.runs("compare-bench", client)["run_id"]:
                    for key in EPOCH_METRICS:
                        client.get_metric_history(run_id, key)

            t_ours, t_naive = [], []
            # Alternating, so a slow spell of the machine hits both alike; the first round
            # is the warm-up.
            for _ in range(repeats + 1):
                t_ours += C.timed(ours, 1, warmup=0)
                t_naive += C.timed(naive, 1, warmup=0)
        finally:
            os.chdir(before)
    load = C.workload(f"synthetic local SQLite store: {n_runs} runs x {epochs} epochs x "
                      f"{len(EPOCH_METRICS)} metrics")
    return [C.row("compare.runs + compare.history", load, "s", t_ours[1:],
                  "runs() + one get_metric_history call per run per metric", t_naive[1:],
                  style="speed", readme=True)]
