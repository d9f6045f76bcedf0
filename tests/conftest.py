"""Shared fixtures: the offline digits, one compiled trainer per grad mode, a temp store.

Everything is real: MindSpore trains, MLflow writes an SQLite store in a temp folder.
Trainers are shared per session because compiling costs seconds and `fit` resets them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# In CI the property tests draw the same examples every run, so a landing never hinges on
# luck; locally they draw new ones each run and keep exploring.
if os.environ.get("CI"):
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True)
    settings.load_profile("ci")
ARTIFACTS = ROOT / "tests" / "artifacts"
# The tests of one process's behaviour (faults, kills, output) run one worker, as they did
# before `--workers auto` became the default; tests of the default remove this (None).
os.environ["RUNNER_WORKERS"] = "1"


@pytest.fixture(scope="session")
def mnist():
    from experiments.core.data import load_offline_sample

    return load_offline_sample(reason="tests run offline")


@pytest.fixture(scope="session")
def prepared(mnist):
    from experiments.core.train import Prepared

    return Prepared.from_mnist(mnist)


@pytest.fixture(scope="session")
def trainers():
    """The process's compiled trainer per grad mode, as sweeps in this process use it."""
    from experiments.core.train import trainer_for

    return trainer_for


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh project folder: cwd is tmp_path, so mlruns/ lands there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600):
    """Run runner.py as a user would, in `cwd`; returns the CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env.update(env or {})
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset
    return subprocess.run([sys.executable, str(ROOT / "runner.py"), *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def mlflow_client(folder: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
