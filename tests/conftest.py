"""Shared fixtures: the offline digits, one compiled trainer per grad mode, a temp store.

Everything is real: MindSpore trains, MLflow writes an SQLite store in a temp folder.
Trainers are shared per session because compiling costs seconds and `fit` resets them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

# MindSpore's CPU kernels take the CPU's widest vector unit, and AVX-512 rounds otherwise
# than AVX2 (runtime/kernels.py): the bits the tests hold (test_tasks.py's SEED_BITS, the
# same trial values) were recorded with AVX2 kernels, so every test process uses AVX2's,
# on any x86 machine. Set before MindSpore runs a kernel; the replay tests lift it.
os.environ["DNNL_MAX_CPU_ISA"] = "AVX2"
os.environ.pop("ONEDNN_MAX_CPU_ISA", None)  # it would win over the line above

import runner
from helpers import PROJECT_SWEEP, ROOT, database, env_without_tracking, free_port

# In CI the property tests draw the same examples every run, so a landing never hinges on
# luck; locally they draw new ones each run and keep exploring.
if os.environ.get("CI"):
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True)
    settings.load_profile("ci")
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
    """The process's compiled trainer per grad mode (the built-in task, the seed's
    optimizer), as sweeps in this process use it."""
    from experiments.core import config as cfg
    from experiments.core.train import trainer_for

    return lambda mode: trainer_for(cfg.build({"grad_mode": mode}))


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh project folder: cwd is tmp_path, so mlruns/ lands there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


# (was in tests/test_results.py)
@pytest.fixture(scope="session")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("project")
    (folder / "look.yaml").write_text(PROJECT_SWEEP)
    before, env = os.getcwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(folder)
    try:
        assert runner.main(["sweep", "look.yaml"]) == 0
    finally:
        os.chdir(before)
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env
    return folder


# (was in tests/test_scale.py)
@pytest.fixture
def own_postgres():
    """A PostgreSQL of this test's own, to restart under a running sweep."""
    folder = Path(tempfile.mkdtemp(prefix="runner-pg-restart-"))
    os.chmod(folder, 0o777)
    script = str(ROOT / ".ci" / "postgres.sh")
    try:
        url = subprocess.run([script, "start", str(folder), str(free_port())], check=True,
                             capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"no PostgreSQL here: {exc}")
    yield url, lambda: subprocess.run([script, "restart", str(folder)], check=True)
    subprocess.run([script, "stop", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


# (was in tests/test_reliability.py)
@pytest.fixture(scope="session")
def postgres():
    """TEST_POSTGRES_URL from .ci/run, or a server of our own for this module."""
    if os.environ.get("TEST_POSTGRES_URL"):
        yield os.environ["TEST_POSTGRES_URL"]
        return
    # Not under pytest's private tmp: the server runs as user postgres and must reach it.
    folder = Path(tempfile.mkdtemp(prefix="runner-pg-"))
    os.chmod(folder, 0o777)
    script = str(ROOT / ".ci" / "postgres.sh")
    url = subprocess.run([script, "start", str(folder), str(free_port())], check=True,
                         capture_output=True, text=True).stdout.strip()
    yield url
    subprocess.run([script, "stop", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


# (was in tests/test_reliability.py)
@pytest.fixture
def mlflow_server(postgres, tmp_path):
    port = free_port()
    env = env_without_tracking(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         database(postgres, f"mlflow_{port}"), "--artifacts-destination",
         str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    end = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert time.time() < end and proc.poll() is None, "mlflow server did not start"
            time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)

