"""Tracking under concurrency: workers racing on the same MLflow store lose nothing."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from experiments.core.data import Mnist
from experiments.tracking import mlflow_run, store

EXPERIMENTS = 12


def _tiny_mnist() -> Mnist:
    images = np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28)
    labels = np.arange(4, dtype=np.int32)
    return Mnist(images, labels, images, labels, name="tiny-digits", source="test")


def _log_same_dataset(uri: str, experiments: list[str], barrier, results) -> None:
    from mlflow import MlflowClient

    client, data, errors = MlflowClient(uri), _tiny_mnist(), []
    for name in experiments:
        run = mlflow_run.MlflowRun.start(client, name, "race", {}, None, None)
        barrier.wait(timeout=60)  # both workers log the same new dataset at the same moment
        try:
            run.log_data(data, {"train": 4, "test": 4})
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
        run.end()
    results.put(errors)


@pytest.mark.slow
def test_two_workers_log_the_same_new_dataset_at_once(tmp_path):
    """MLflow inserts a dataset after looking it up; without a retry one worker's run fails."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    names = [f"race-{i}" for i in range(EXPERIMENTS)]
    for name in names:  # the store and experiments exist before the workers start
        store.experiment_id(client, name)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_log_same_dataset, args=(uri, names, barrier, results))
               for _ in range(2)]
    for w in workers:
        w.start()
    errors = [results.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert errors == [[], []]
    for name in names:
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert len(runs) == 2
        assert all(len(r.inputs.dataset_inputs) == 1 for r in runs)
        assert {r.inputs.dataset_inputs[0].dataset.digest for r in runs} == {_tiny_mnist().digest}


def test_epoch_metrics_are_held_back_only_while_epochs_come_fast(store, monkeypatch):
    from experiments.tracking import mlflow_run
    from experiments.tracking.store import client

    c = client()
    run = mlflow_run.MlflowRun.start(c, "e", "r", {"x": 1})
    run.log_epoch(1, {"loss": 2.0})  # within FLUSH_S of the start: held back
    assert c.get_metric_history(run.run_id, "loss") == []
    monkeypatch.setattr(mlflow_run, "FLUSH_S", 0.0)  # an epoch slower than FLUSH_S
    run.log_epoch(2, {"loss": 1.0})
    assert [m.step for m in c.get_metric_history(run.run_id, "loss")] == [1, 2]
    monkeypatch.setattr(mlflow_run, "FLUSH_S", 60.0)
    run.log_epoch(3, {"loss": 0.5})
    run.end("FINISHED", {"done": "yes"})
    finished = c.get_run(run.run_id)
    assert [m.step for m in c.get_metric_history(run.run_id, "loss")] == [1, 2, 3]
    assert finished.info.status == "FINISHED" and finished.data.tags["done"] == "yes"

