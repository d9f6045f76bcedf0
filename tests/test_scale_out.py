"""Scale out: PostgreSQL storage with heartbeats, a real `mlflow server`, Optuna's gRPC
storage proxy for many workers, and storage URLs checked and masked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from helpers import (
    LIVE,
    ROOT,
    TINY,
    check_complete,
    env_without_tracking,
    free_port,
    run_cli,
    run_with_env,
    start_mlflow_server,
    stop_server,
    sweep_cmd,
)


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:hunter2@db/x", "postgresql://u:***@db/x"),
    ("postgresql://db/x?user=u&password=hunter2", "postgresql://db/x?user=u&password=***"),
    ("postgresql://db/x?PASSWORD=hunter2&sslmode=require",
     "postgresql://db/x?PASSWORD=***&sslmode=require"),
])
def test_storage_passwords_are_masked(url, shown):
    from experiments.search.spec.options import masked

    assert masked(f"--storage {url}: cannot open") == f"--storage {shown}: cannot open"


def test_mlflows_own_database_is_not_a_study_storage(tmp_path):
    (tmp_path / "s.yaml").write_text(LIVE)
    result = run_cli("sweep", "s.yaml", "--storage", "sqlite:///mlruns/mlflow.db", cwd=tmp_path)
    assert result.returncode == 2 and "that is MLflow's database" in result.stderr, result
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_two_worker_processes_on_postgres_and_mlflow_server(postgres, mlflow_server, tmp_path):
    storage = database(postgres, "optuna_two")
    env = env_without_tracking(MLFLOW_TRACKING_URI=mlflow_server)
    procs = [subprocess.Popen(sweep_cmd(str(TINY), "--n-trials", "8", "--storage", storage),
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    trials, client, runs = remote_state(storage, mlflow_server)
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    children = [r for r in runs if r.data.tags.get("sweep.parent") != "true"]
    check_complete(trials, client, parents + children, budget=8, epochs=2)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len({t.params["learning_rate"] for t in complete}) == 8
    assert len({t.user_attrs["worker"] for t in complete}) == 2
    assert len(parents) == 1
    by_trial = {r.data.tags["trial"]: r.info.run_id for r in children}
    assert by_trial == {str(t.number): t.user_attrs["mlflow_run_id"] for t in complete}
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)


def remote_state(storage_url: str, server: str, name: str = "tiny"):
    from mlflow import MlflowClient

    study = optuna.load_study(study_name=name, storage=storage_url)
    client = MlflowClient(server)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return study.get_trials(), client, runs


def database(base_url: str, name: str) -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return base_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.slow
def test_heartbeat_retries_a_killed_workers_trial(postgres, mlflow_server, tmp_path):
    storage = database(postgres, "optuna_heartbeat")
    env = env_without_tracking(MLFLOW_TRACKING_URI=mlflow_server, RUNNER_HEARTBEAT_S="1",
                               RUNNER_GRACE_S="4")
    args = sweep_cmd(str(TINY), "--n-trials", "16", "--storage", storage)
    victim = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def has_trial(proc, state) -> bool:
        try:
            trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
        except Exception:
            return False
        return any(t.state == state and t.user_attrs.get("worker", "").endswith(f":{proc.pid}")
                   for t in trials)

    def wait(predicate):
        end = time.time() + 300
        while not predicate():
            assert time.time() < end
            time.sleep(0.2)

    wait(lambda: has_trial(victim, TrialState.COMPLETE))
    survivor = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    # Kill the victim mid-trial once the survivor is past its start-up check, so only the
    # heartbeat can tell that the victim is gone.
    wait(lambda: has_trial(survivor, TrialState.COMPLETE) and has_trial(victim,
                                                                          TrialState.RUNNING))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    _, err = survivor.communicate(timeout=900)
    assert survivor.returncode == 0, err[-3000:]
    trials, client, runs = remote_state(storage, mlflow_server)
    check_complete(trials, client, runs, budget=16, epochs=2)
    retries = [t for t in trials if "retry_of" in t.user_attrs]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].user_attrs["crash_detected_by"] == "heartbeat"
    crashed = [t for t in trials if t.number == retries[0].user_attrs["retry_of"]]
    assert crashed[0].state == TrialState.FAIL and crashed[0].params == retries[0].params
    assert crashed[0].user_attrs["worker"].endswith(f":{victim.pid}")
    assert client.get_run(crashed[0].user_attrs["run_id.has_aux"]).info.status == "KILLED"


def test_scale_out_recipe_is_in_the_docs():
    readme = (Path(ROOT) / "docs" / "scale-out.md").read_text()
    assert "--storage postgresql://" in readme and "mlflow server --backend-store-uri" in readme


@pytest.mark.parametrize("args,problem", [
    (["storage-proxy", "--storage", "grpc://127.0.0.1:13000"], "not another proxy"),
    (["storage-proxy", "--storage", "nonsense"], "--storage: expected a URL starting with"),
    (["storage-proxy", "--storage", "sqlite:///x.db", "--port", "70000"], "--port: expected"),
    (["sweep", str(TINY), "--storage", "grpc://127.0.0.1"], "expected grpc://HOST:PORT"),
    (["sweep", str(TINY), "--storage", "grpc://:13000"], "expected grpc://HOST:PORT"),
    (["sweep", str(TINY), "--storage", "grpc://127.0.0.1:1"], "cannot open the study storage"),
])
def test_bad_proxy_input_is_one_line_exit_2(tmp_path, args, problem):
    proc = run_with_env(*args, cwd=tmp_path, env={"RUNNER_PROXY_WAIT_S": "1"})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and problem in proc.stderr, proc.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "x.db").exists()


@pytest.mark.slow
def test_through_the_proxy_a_killed_workers_trial_is_retried_by_beats(tmp_path, proxy):
    """Two sweep commands (two machines, as far as the study can tell) through the proxy;
    one is killed with -9 mid-trial. Optuna's proxy passes no heartbeats on, so the
    survivor knows the lost trial by the runner's beats, fails it and retries it."""
    import optuna

    url, grpc_url = proxy
    args = ["sweep", str(TINY), "--n-trials", "5", "--storage", grpc_url]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                            "RUNNER_FAULT")}
    env |= {"RUNNER_HEARTBEAT_S": "1", "RUNNER_GRACE_S": "5"}
    runner_py = [sys.executable, str(ROOT / "runner.py")]
    doomed = subprocess.Popen([*runner_py, *args], cwd=tmp_path,
                              env=env | {"RUNNER_FAULT": "run_started:2"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert doomed.wait(timeout=300) == -signal.SIGKILL
    # As if it ran on another machine: its process cannot be looked up, only its beats.
    study = optuna.load_study(study_name="tiny", storage=url)
    [running] = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    study._storage.set_trial_user_attr(running._trial_id, "worker", "another-host:4242")
    survivor = subprocess.run([*runner_py, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
    assert survivor.returncode == 0, survivor.stderr[-3000:]
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 5
    lost = [t for t in trials if t.state.name == "FAIL"]
    assert len(lost) == 1 and lost[0].user_attrs["fail_kind"] == "crashed"
    assert "runner.beat" in lost[0].system_attrs
    retry = [t for t in complete if t.user_attrs.get("retry_of") == lost[0].number]
    assert len(retry) == 1 and retry[0].params == lost[0].params
    assert retry[0].user_attrs["crash_detected_by"] == "beats stopped"
    assert all("runner.beat" in t.system_attrs for t in complete)


@pytest.fixture
def proxy(own_postgres):
    """`runner.py storage-proxy` in front of a PostgreSQL of the test's own."""

    url, _ = own_postgres
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "runner.py"), "storage-proxy",
                             "--storage", url, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    import optuna

    storage = None
    end = time.time() + 60
    while storage is None:
        try:
            storage = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
            storage.wait_server_ready(timeout=1)
        except ConnectionError:
            storage = None
            assert time.time() < end and proc.poll() is None, proc.stderr.read()
    yield url, f"grpc://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_eight_workers_through_the_proxy_keep_the_budget_and_few_connections(
        tmp_path, proxy, capsys):
    """The load test: 8 worker processes (threads capped) on a real PostgreSQL and a real
    `mlflow server`, once through the proxy and once straight to the database. The global
    budget is exact, no trial is lost or trained twice, and the proxy bounds PostgreSQL's
    connections."""
    import threading

    import optuna

    url, grpc_url = proxy
    port = free_port()
    server = start_mlflow_server(tmp_path, port)
    env = {k: v for k, v in os.environ.items() if k not in ("RUNNER_FAULT",)}
    env |= {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    figures = {}
    try:
        for how, storage in (("proxy", grpc_url), ("direct", url)):
            name = f"load_{how}"
            sweep = tmp_path / f"{name}.yaml"
            sweep.write_text(TINY.read_text().replace("name: tiny", f"name: {name}"))
            finished = threading.Event()
            peak: list[int] = []
            watcher = threading.Thread(target=lambda e=finished, p=peak: p.append(
                _peak_connections(url, url.rsplit("/", 1)[1], e)))
            watcher.start()
            start = time.time()
            proc = subprocess.run(
                [sys.executable, str(ROOT / "runner.py"), "sweep", str(sweep), "--workers",
                 "8", "--n-trials", "24", "--storage", storage, "--quiet"],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
            seconds = time.time() - start
            finished.set()
            watcher.join()
            assert proc.returncode == 0, proc.stderr[-3000:]
            trials = optuna.load_study(study_name=name, storage=url).get_trials()
            complete = [t for t in trials if t.state.name == "COMPLETE"]
            assert len(complete) == 24  # the global budget, exactly
            # Each configuration trained once: no trial lost, none duplicated.
            assert len({t.number for t in complete}) == 24
            assert not [t for t in trials if t.state.name == "RUNNING"]
            failed = [t for t in trials if t.state.name == "FAIL"]
            workers = {t.user_attrs["worker"] for t in complete}
            figures[how] = {"seconds": round(seconds, 1), "peak_connections": peak[0],
                            "trials": len(trials), "failed": len(failed),
                            "workers": len(workers)}
    finally:
        stop_server(server)
    with capsys.disabled():
        print(f"\nload test, 8 workers, 24 trials: {figures}")
    assert figures["proxy"]["workers"] >= 2 and figures["direct"]["workers"] >= 2
    # Through the proxy PostgreSQL sees the proxy's pool, not each worker's connections.
    assert figures["proxy"]["peak_connections"] < figures["direct"]["peak_connections"]


def _peak_connections(base_url, database, stop):
    """The most connections PostgreSQL had open to `database`, polled every 0.2 s."""
    import psycopg

    admin = base_url.rsplit("/", 1)[0] + "/postgres"
    peak = 0
    with psycopg.connect(admin, autocommit=True) as conn:
        while not stop.is_set():
            row = conn.execute("select count(*) from pg_stat_activity where datname = %s",
                               (database,)).fetchone()
            peak = max(peak, row[0])
            stop.wait(0.2)
    return peak


def test_a_second_proxy_on_a_taken_port_is_refused(tmp_path):
    """gRPC binds with SO_REUSEPORT: a second proxy would start on the same port and take
    half the workers to another database."""

    port = str(free_port())
    first = subprocess.Popen([sys.executable, str(ROOT / "runner.py"), "storage-proxy",
                              "--storage", f"sqlite:///{tmp_path / 'a.db'}", "--port", port],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        end = time.time() + 60
        while not (tmp_path / "a.db").exists():
            assert time.time() < end and first.poll() is None
            time.sleep(0.2)
        time.sleep(1.0)
        second = run_with_env("storage-proxy", "--storage", f"sqlite:///{tmp_path / 'b.db'}",
                              "--port", port, cwd=tmp_path)
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=30)
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
    assert f"cannot serve on 127.0.0.1:{port} (Address already in use)" in second.stderr
    assert not (tmp_path / "b.db").exists()

