"""What the tests share: running the CLI as a user does, reading the stores back, waiting,
and real servers (an MLflow tracking server on a free port).

Everything here is real: a command is `runner.py` in a subprocess, a study is read from
the journal the sweep wrote, runs from the SQLite store or the server they went to.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots and pictures the tests leave
TINY = ROOT / "sweeps" / "tiny.yaml"
# Trials long enough (about 2 s of training) that a signal sent while one trains lands in
# its training, not between trials: the tiny sweep trains in a few tenths of a second.
LONGER = ("--set", "epochs=4", "--set", "batch_size=16")


def user_env(**extra: str | None) -> dict[str, str]:
    """The environment a user's command gets: no tracking URI or fault unless given;
    None removes a variable."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                            "RUNNER_FAULT")}
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def runner_argv(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "runner.py"), *args]


def run(*args: str, cwd: Path, timeout: float = 600, **env: str | None
        ) -> subprocess.CompletedProcess:
    """`runner.py ARGS` to its end, stdout and stderr apart."""
    return subprocess.run(runner_argv(*args), cwd=cwd, env=user_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def start(*args: str, cwd: Path, group: bool = False, **env: str | None) -> subprocess.Popen:
    """`runner.py ARGS` in the background, stdout and stderr apart; in its own process group
    (as a shell's job) when `group`, so a test can signal the group as a terminal does."""
    return subprocess.Popen(runner_argv(*args), cwd=cwd, env=user_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=group)


def wait_for(predicate: Callable[[], bool], timeout: float = 180.0, every: float = 0.2
             ) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(every)
    return False


def journal_study(folder: Path, name: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = folder / "mlruns" / "optuna" / "journal.log"
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage)


def trials_of(folder: Path, name: str) -> list:
    """The study's trials, or [] while it does not exist yet."""
    try:
        return journal_study(folder, name).get_trials()
    except (KeyError, FileNotFoundError, ValueError, OSError):
        return []


def store_client(folder: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")


def sweep_runs(folder: Path, name: str, client=None):
    """(client, parent runs, trial runs) of experiment `name`."""
    client = client or store_client(folder)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    children = [r for r in runs if r.data.tags.get("sweep.parent") != "true"]
    return client, parents, children


def write_sweep(folder: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def running_with_runs(folder: Path, name: str, n: int = 1) -> bool:
    """n trials are training (their run exists), and one has finished."""
    trials = trials_of(folder, name)
    running = [t for t in trials if t.state.name == "RUNNING"
               and any(k.startswith("run_id.") for k in t.user_attrs)]
    return len(running) >= n and any(t.state.name == "COMPLETE" for t in trials)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on SQLite in `folder`, answering on 127.0.0.1:port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
         str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], env=user_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            assert time.time() < end and proc.poll() is None, "mlflow server did not start"
            time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def no_stray_processes(marker: str = "runner.py") -> list[int]:
    """Pids of processes of this user still running `marker` other than this one."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600):
    """Run runner.py as a user would, in `cwd`; returns the CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env.update(env or {})
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset
    return subprocess.run([sys.executable, str(ROOT / "runner.py"), *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def mlflow_client(folder: Path):
    return store_client(folder)


def database(base_url: str, name: str) -> str:
    """A fresh database `name` on the PostgreSQL server of `base_url`; its URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return base_url.rsplit("/", 1)[0] + f"/{name}"


EPOCH_METRICS = ("train_loss", "test_loss", "test_accuracy", "grad_cosine", "grad_norm_ratio",
                 "epoch_time_s", "train_time_s")


# (was in tests/test_trust.py)
REPEATS = """
name: seeds
method: random
n_trials: 2
seed: 3
repeats: 3
pruner: {type: none}
fixed: {epochs: 1, batch_size: 256, data.download: false}
parameters:
  learning_rate: {distribution: log_uniform_values, min: 0.05, max: 0.3}
"""


# (was in tests/test_results.py)
PROJECT_SWEEP = """
name: look
method: grid
n_trials: 2
seed: 0
pruner: {type: none}
fixed: {epochs: 3, batch_size: 128, data.download: false}
parameters:
  learning_rate: {values: [0.2, 0.01]}
ablation: {grad_mode: [has_aux, no_aux, stop_gradient]}
"""


# (was in tests/test_scale.py)
def run_with_env(*args, cwd, env=None, timeout=600):
    full = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                            "RUNNER_FAULT")}
    return subprocess.run([sys.executable, str(ROOT / "runner.py"), *args], cwd=cwd,
                          env=full | (env or {}), capture_output=True, text=True,
                          timeout=timeout)


# (was in tests/test_sweep_truth.py)
def sweep_file(folder, text: str, name: str = "s.yaml"):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# (was in tests/test_sweep_truth.py)
FAST = "fixed: {epochs: 1, batch_size: 1000, data.download: false}"


# (was in tests/test_sweep_truth.py)
TINY_SPACE = f"""
    name: question
    method: random
    n_trials: 1
    pruner: {{type: none}}
    {FAST}
    parameters:
      learning_rate: {{distribution: log_uniform_values, min: 0.01, max: 0.5}}
    """


# (was in tests/test_sweep.py)
def start_merged(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([sys.executable, str(ROOT / "runner.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# (was in tests/test_speed.py)
SMALL_SWEEP = """name: m
method: random
metric: {name: test_accuracy, goal: maximize}
n_trials: 5
seed: 3
pruner: {type: none}
fixed: {epochs: 1, batch_size: 128, data.download: false}
parameters:
  learning_rate: {distribution: log_uniform_values, min: 1.0e-3, max: 0.3}
"""


# (was in tests/test_first_hour.py)
# What MLflow and Optuna print when something is not handled: none may reach the user.
NOISE = re.compile(r"warn|deprecat|View run|View experiment|cloudpickle|Traceback|"
                   r"ExperimentalWarning|UserWarning|\[W \d", re.I)


# (was in tests/test_first_hour.py)
LIVE = """
name: live
method: random
n_trials: 6
seed: 3
pruner: {type: none}
fixed: {epochs: 2, batch_size: 500, data.download: false}
parameters:
  learning_rate: {distribution: uniform, min: 0.05, max: 0.3}
"""


# (was in tests/test_results.py)
def get_json(url: str, payload: dict | None = None) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


# (was in tests/test_results.py)
def wait_http(url: str, timeout: float = 90.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout}s")


# (was in tests/test_reliability.py)
def sweep_cmd(*args) -> list[str]:
    return [sys.executable, str(ROOT / "runner.py"), "sweep", *args]


# (was in tests/test_reliability.py)
def env_without_tracking(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "RUNNER_FAULT")}
    return env | extra


# (was in tests/test_reliability.py)
def check_complete(trials, client, runs, budget, epochs):
    """The invariants: exact budget, nothing RUNNING, every finished run fully recorded."""
    from optuna.trial import TrialState

    others = [(t.number, t.state.name, t.user_attrs.get("fail_kind"), t.user_attrs.get(
        "fail_reason"), t.params) for t in trials
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)]
    counted = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert counted == budget, others
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        run_id = t.user_attrs["mlflow_run_id"]
        assert client.get_run(run_id).data.tags["trial"] == str(t.number)
        for key in EPOCH_METRICS:
            steps = sorted(m.step for m in client.get_metric_history(run_id, key))
            assert steps == list(range(1, epochs + 1)), (t.number, key, steps)


# What a sweep says while it works, beside what a test looks for: the data, the compile,
# the workers, each counted trial, an outage waited out.
PROGRESS = ("data:", "compiling the graphs ", "trial ", "waiting: ",
            "stopping: ")  # the last is said when a stop takes over a second


def said(stderr: str) -> list[str]:
    """The lines of a command's stderr that are not its progress."""
    return [line for line in stderr.splitlines() if not line.startswith(PROGRESS)
            and not re.match(r"\d+ workers: each compiles", line)]


# A user's own network in the tutorial's functional style, with its own keys and loss, and
# dropout (random as it trains), as a task file of a temporary folder.
SMALL_CNN = '''"""A small CNN: two convolutions, dropout, one dense layer."""
from mindspore import nn, ops

keys = {"channels": (4, 2, 16), "dropout": (0.2, 0.0, 0.9)}


class SmallCnn(nn.Cell):
    def __init__(self, channels, dropout):
        super().__init__()
        self.features = nn.SequentialCell(
            nn.Conv2d(1, channels, 3, pad_mode="same"), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(channels, channels * 2, 3, pad_mode="same"), nn.ReLU(),
            nn.MaxPool2d(2, 2), nn.Flatten())
        self.drop = nn.Dropout(p=dropout)
        self.head = nn.Dense(channels * 2 * 7 * 7, 10)

    def construct(self, x):
        return self.head(self.drop(self.features(x)))


def network(config):
    return SmallCnn(config.settings["channels"], config.settings["dropout"])


def loss(logits, labels):
    return ops.cross_entropy(logits, labels)
'''


def write_task(folder: Path, text: str = SMALL_CNN, name: str = "cnn.py") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# A task with its own data: three Gaussian blobs in the plane, three classes.
BLOBS = '''"""Three Gaussian blobs in the plane: a task with its own data."""
import numpy as np
from mindspore import nn

keys = {"hidden": (16, 2, 256)}


def data(config):
    rng = np.random.default_rng(7)
    centres = np.array([[0, 0], [3, 3], [0, 4]], np.float32)
    y = rng.integers(0, 3, 1200)
    x = (centres[y] + rng.standard_normal((1200, 2))).astype(np.float32)
    return {"train_x": x[:1000], "train_y": y[:1000], "test_x": x[1000:], "test_y": y[1000:],
            "name": "blobs"}


def network(config):
    h = config.settings["hidden"]
    return nn.SequentialCell(nn.Dense(2, h), nn.ReLU(), nn.Dense(h, 3))


def to_input(image):  # an image file's brightness and contrast, as a point of the plane
    return np.array([image.mean() / 64, image.std() / 64], np.float32)
'''
