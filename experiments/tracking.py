"""Everything MLflow: where the store lives, and what one run records.

The local default is an SQLite store in `mlruns/mlflow.db` with artifacts in
`mlruns/artifacts` (MLflow 3 refuses a plain file store); `MLFLOW_TRACKING_URI` overrides.
A fresh SQLite store created by two processes at once is corrupted for good, so creation
is serialised with a file lock. Runs are written through `MlflowClient` with explicit run
ids, which works the same in one process and across worker processes.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import platform
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from experiments import faults
from experiments.retry import retry

MLRUNS = Path("mlruns")
PACKAGES = ("mindspore", "numpy", "mlflow", "optuna", "pandas")


def default_uri(root: Path = MLRUNS) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def _artifact_root() -> str | None:
    """Artifacts go under mlruns/ for the default store; a server or custom URI decides itself."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (MLRUNS / "artifacts").resolve().as_uri()


@contextmanager
def _store_lock() -> Iterator[None]:
    MLRUNS.mkdir(exist_ok=True)
    with open(MLRUNS / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def client():
    """A client on the project's store, creating (and migrating) the store once, under a lock."""
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A local path as dataset source matches two equivalent source types; harmless.
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
    # No mlflow.set_tracking_uri(): it exports MLFLOW_TRACKING_URI, which would hide from
    # the rest of this process whether the user chose the store.
    uri = tracking_uri()
    if uri.startswith("sqlite:") and not os.environ.get("MLFLOW_TRACKING_URI"):
        with _store_lock():
            c = MlflowClient(uri)
            c.search_experiments(max_results=1)
        return c
    return MlflowClient(uri)


def experiment_id(c: Any, name: str) -> str:
    """Get or create an experiment; safe when several workers race to create it."""
    from mlflow.exceptions import MlflowException

    found = c.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            c.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        # The kind tag makes MLflow 3's UI open on the runs table, not the GenAI overview.
        return c.create_experiment(name, artifact_location=_artifact_root_for(name),
                                   tags={"mlflow.experimentKind": "custom_model_development"})
    except MlflowException:
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _artifact_root_for(name: str) -> str | None:
    root = _artifact_root()
    return None if root is None else f"{root}/{artifact_folder(name)}"


def artifact_folder(name: str) -> str:
    """A folder name for an experiment's artifacts that stays one folder under mlruns/.

    Experiment names are free text in MLflow; in a URI '/' and '..' would climb out of the
    artifact root and '#' or '?' would cut the name short. A name made only of safe
    characters is its own folder; any other gets its unsafe characters replaced and a hash
    of the whole name, so two names never share a folder.
    """
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) and len(name) <= 100:
        return name
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60].lstrip(".") or "experiment"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def server_args(host: str, port: int) -> list[str]:
    """`mlflow server` arguments for the project's store, artifacts served from mlruns/."""
    args = ["server", "--backend-store-uri", tracking_uri(), "--host", host, "--port",
            str(port), "--workers", "1"]
    root = _artifact_root()
    if root:
        args += ["--default-artifact-root", root]
    return args


@functools.cache
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


class Run:
    """One MLflow run, written with explicit ids; every epoch is one batched write."""

    def __init__(self, c: Any, run_id: str) -> None:
        self.client, self.run_id = c, run_id

    @classmethod
    def start(cls, c: Any, experiment: str, name: str, params: dict[str, Any],
              tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> Run:
        from mlflow.entities import Param

        all_tags = {f"versions.{k}": v for k, v in versions().items()} | (tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = c.create_run(experiment_id(c, experiment), run_name=name, tags=all_tags)
        self = cls(c, run.info.run_id)
        c.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return self

    def log_config(self, config: dict[str, Any]) -> None:
        self.client.log_dict(self.run_id, config, "config.yaml")

    def log_data(self, data: Any, split_sizes: dict[str, int]) -> None:
        """Which digits trained this run: source, sizes and a content digest."""
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        dataset = mlflow.data.from_numpy(
            data.train_images.reshape(len(data.train_images), -1), source=data.source,
            targets=data.train_labels, name=data.name, digest=data.digest)
        tags = {"data.source": data.source, "data.digest": data.digest,
                **{f"data.{k}_size": str(v) for k, v in split_sizes.items()}}
        if data.fallback_reason:
            tags["data.fallback"] = data.fallback_reason[:5000]
        self.set_tags(tags)
        inputs = [DatasetInput(dataset._to_mlflow_entity(),
                               [InputTag("mlflow.data.context", "training")])]
        # MLflow's store looks the dataset up and then inserts it: two workers logging the
        # same new dataset at once make one of them fail on the unique key (reproduced in
        # tests/test_tracking.py). The second attempt finds the row and links it.
        retry(lambda: self.client.log_inputs(self.run_id, inputs), attempts=3,
              catch=MlflowException, pause_s=0.2, growth_s=0.2)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        faults.point("log_epoch")
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(k, float(v), now, epoch) for k, v in metrics.items()])

    def log_series(self, key: str, values: dict[int, float]) -> None:
        """One metric at many steps, in one write."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(key, float(v), now, step) for step, v in values.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_image(self, image: Any, name: str) -> None:
        """A PIL image as a PNG artifact."""
        self.client.log_image(self.run_id, image, artifact_file=name)

    def log_figure(self, figure: Any, name: str) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, figure, name)
        plt.close(figure)

    def end(self, status: str = "FINISHED") -> None:
        faults.point("run_end")
        self.client.set_terminated(self.run_id, status)
