"""Tracking under concurrency: workers racing on the same MLflow store lose nothing."""

import multiprocessing as mp

import numpy as np
import pytest

from experiments.core.data import Mnist
from experiments.tracking import mlflow_run, store

EXPERIMENTS = 12

pytestmark = pytest.mark.slow  # processes, kills, servers, PostgreSQL


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
