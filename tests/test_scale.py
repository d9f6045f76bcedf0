"""Scale up and out: devices per worker, infrastructure failures that never burn the
budget, and the storage proxy; on real MindSpore, MLflow, Optuna and PostgreSQL."""

import contextlib
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
from test_sweep import TINY, journal_study, sweep_runs

from conftest import ROOT, mlflow_client


def cli(*args, cwd, env=None, timeout=600):
    full = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                            "RUNNER_FAULT")}
    return subprocess.run([sys.executable, str(ROOT / "runner.py"), *args], cwd=cwd,
                          env=full | (env or {}), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("device", ["GPU", "Ascend"])
@pytest.mark.parametrize("command", ["train", "sweep", "dry-run"])
def test_a_device_this_machine_lacks_is_one_line_exit_2(tmp_path, device, command):
    args = {"train": ["train"], "sweep": ["sweep", str(TINY)],
            "dry-run": ["sweep", str(TINY), "--dry-run"]}[command]
    proc = cli(*args, "--set", f"device={device}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: device {device} (device_id 0): MindSpore cannot use "
                               f"it on this machine: Unsupported device target {device}")
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "MNIST_Data").exists()


@pytest.mark.parametrize("args,problem", [
    (["--devices", "0,0"], "--devices 0,0: an id is given twice"),
    (["--devices", "a,b"], "--devices: expected device ids from 0 to 4095"),
    (["--devices", ""], "--devices: expected device ids"),
    (["--devices", "0,1", "--workers", "3"], "--workers 3 with --devices 0,1: one worker per"),
    (["--devices", "0,1", "--set", "device_id=2"], "--devices and device_id"),
    (["--set", "device=cpu"], "'device': expected one of CPU, GPU, Ascend, got 'cpu'"),
    (["--set", "device_id=-1"], "device_id"),
    (["--devices", "²"], "--devices: expected device ids"),  # isdigit() says yes; int() no
])
def test_bad_device_flags_are_one_line_exit_2(tmp_path, args, problem):
    proc = cli("sweep", str(TINY), *args, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert problem in proc.stderr and not (tmp_path / "mlruns").exists()


def test_a_device_is_not_searched(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY.read_text().replace(
        "parameters:\n", "parameters:\n  device_id: {values: [0, 1]}\n"))
    proc = cli("sweep", str(path), cwd=tmp_path)
    assert proc.returncode == 2 and "parameters.device_id: where trials run is not searched" \
        in proc.stderr


def test_devices_give_one_worker_per_device_id(tmp_path):
    proc = cli("sweep", str(TINY), "--devices", "0,1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _, _, children = sweep_runs(tmp_path, "tiny")
    by_worker = {}
    for r in children:
        assert r.data.params["device"] == "CPU"
        by_worker.setdefault(r.data.tags["worker"], set()).add(r.data.params["device_id"])
    # Two workers, each recording its own device id on every run it trained.
    assert sorted(by_worker.values(), key=sorted) == [{"0"}, {"1"}]
    trials = journal_study(tmp_path, "tiny").get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    # A rerun on other devices continues the same study: where is not what.
    again = cli("sweep", str(TINY), "--devices", "3", "--n-trials", "5", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    runs = mlflow_client(tmp_path).search_runs(
        [mlflow_client(tmp_path).get_experiment_by_name("tiny").experiment_id],
        "tags.trial = '4'")
    assert [r.data.params["device_id"] for r in runs] == ["3"]


# --- infrastructure failures ------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """mlruns/ on a 3 MB tmpfs: the tracking store, its artifacts and the journal fill it
    in the first trial (a logged model is 2.9 MB). Needs root (CI runs as root)."""
    mlruns = tmp_path / "mlruns"
    mlruns.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mlruns)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mlruns
    subprocess.run(["umount", "-l", str(mlruns)], check=False)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_stops_in_one_line_and_costs_no_budget(tmp_path, small_disk, workers):
    first = cli("sweep", str(TINY), "--workers", workers, cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    errors = [line for line in first.stderr.splitlines() if not line.startswith("data:")]
    assert len(errors) == 1 and "Traceback" not in first.stderr, first.stderr[-3000:]
    assert errors[0].startswith("error: disk full") and "rerun the same command" in errors[0]
    study = journal_study(tmp_path, "tiny")  # the journal is whole: every line reads
    counted = [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")
               or "fail_reason" in t.user_attrs]
    assert not [t for t in counted if "space" in str(t.user_attrs.get("fail_reason", ""))]
    # Space freed: the same command completes the full budget.
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    again = cli("sweep", str(TINY), "--workers", workers, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = journal_study(tmp_path, "tiny").get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and "4/4 trials counted" in again.stdout
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed and all(t.user_attrs.get("fail_kind") in ("infrastructure", "crashed")
                          for t in failed)
    assert all("fail_reason" not in t.user_attrs for t in failed)
    _, parents, children = sweep_runs(tmp_path, "tiny")
    assert parents[0].info.status == "FINISHED"
    assert not [r for r in children if r.info.status == "RUNNING"]


def test_the_journal_takes_whole_lines_or_none(tmp_path, small_disk):
    """Optuna's own append left half a line on a full disk, and the journal unreadable."""
    import optuna

    from experiments.search.study.storage import WholeLines

    path = small_disk / "journal.log"
    storage = optuna.storages.JournalStorage(WholeLines(str(path)))
    study = optuna.create_study(study_name="s", storage=storage)
    filler = small_disk / "filler"  # fill the disk to its last byte
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"x" * 4096)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"x")
    os.close(fd)
    with pytest.raises(OSError):
        study.set_user_attr("big", "y" * 200_000)
    filler.unlink()
    study.set_user_attr("after", 1)  # appends again once there is room
    again = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path))))
    assert again.user_attrs == {"after": 1}


def start_mlflow_server(folder, port):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
         str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], env=env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            assert time.time() < end and proc.poll() is None, "mlflow server did not start"
            time.sleep(0.5)


def stop(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_vanished_tracking_server_stops_in_one_line_and_costs_no_budget(tmp_path):
    from test_reliability import free_port

    port = free_port()
    server = start_mlflow_server(tmp_path, port)
    # Gone for longer than the sweep waits for it (RUNNER_OUTAGE_WAIT_S, 10 minutes unless
    # set): test_infrastructure.py shows the wait for a server that comes back.
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
           "RUNNER_OUTAGE_WAIT_S": "5"}
    full = {k: v for k, v in os.environ.items() if k != "RUNNER_FAULT"} | env
    args = [sys.executable, str(ROOT / "runner.py"), "sweep", str(TINY), "--n-trials", "6"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        end = time.time() + 300
        while not any(t.state.name == "COMPLETE" for t in _trials(tmp_path)):
            assert time.time() < end and proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        stop(server)  # gone mid-sweep
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    # Trial lines, the wait, then one line saying what broke.
    errors = [line for line in err.splitlines()
              if not line.startswith(("data:", "trial ", "waiting: "))]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert "rerun the same command" in errors[0] and "server unreachable" in errors[0], errors
    assert "waited 5s for it" in errors[0], errors
    counted = [t for t in _trials(tmp_path) if t.state.name == "COMPLETE"]
    server = start_mlflow_server(tmp_path, port)  # back
    try:
        again = subprocess.run(args, cwd=tmp_path, env=full, capture_output=True, text=True,
                               timeout=600)
    finally:
        stop(server)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = _trials(tmp_path)
    assert sum(t.state.name == "COMPLETE" for t in trials) == 6 > len(counted)
    assert not [t for t in trials if "fail_reason" in t.user_attrs]


def _trials(folder):
    try:
        return journal_study(folder, "tiny").get_trials()
    except (KeyError, FileNotFoundError, ValueError):
        return []


@pytest.fixture
def own_postgres():
    """A PostgreSQL of this test's own, to restart under a running sweep."""
    from test_reliability import free_port

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


@pytest.mark.slow
def test_a_postgresql_restart_costs_no_budget(tmp_path, own_postgres):
    import optuna

    url, restart = own_postgres
    args = [sys.executable, str(ROOT / "runner.py"), "sweep", str(TINY), "--n-trials", "6",
            "--storage", url]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                            "RUNNER_FAULT")}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def trials():
        try:
            return optuna.load_study(study_name="tiny", storage=url).get_trials()
        except KeyError:
            return []

    try:
        end = time.time() + 300
        while not any(t.state.name == "COMPLETE" for t in trials()):
            assert time.time() < end and proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        restart()  # every connection of the sweep is cut
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    # It rides the restart out (exit 0) or stops in one line; a rerun then finishes.
    assert proc.returncode in (0, 1) and "Traceback" not in err, err[-3000:]
    if proc.returncode == 1:
        assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1, err
        again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
    done = trials()
    assert sum(t.state.name == "COMPLETE" for t in done) == 6
    assert not [t for t in done if "fail_reason" in t.user_attrs]  # none counted as failed


# --- the storage proxy ------------------------------------------------------------------


@pytest.mark.parametrize("args,problem", [
    (["storage-proxy", "--storage", "grpc://127.0.0.1:13000"], "not another proxy"),
    (["storage-proxy", "--storage", "nonsense"], "--storage: expected a URL starting with"),
    (["storage-proxy", "--storage", "sqlite:///x.db", "--port", "70000"], "--port: expected"),
    (["sweep", str(TINY), "--storage", "grpc://127.0.0.1"], "expected grpc://HOST:PORT"),
    (["sweep", str(TINY), "--storage", "grpc://:13000"], "expected grpc://HOST:PORT"),
    (["sweep", str(TINY), "--storage", "grpc://127.0.0.1:1"], "cannot open the study storage"),
])
def test_bad_proxy_input_is_one_line_exit_2(tmp_path, args, problem):
    proc = cli(*args, cwd=tmp_path, env={"RUNNER_PROXY_WAIT_S": "1"})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and problem in proc.stderr, proc.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "x.db").exists()


@pytest.fixture
def proxy(own_postgres):
    """`runner.py storage-proxy` in front of a PostgreSQL of the test's own."""
    from test_reliability import free_port

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


@pytest.mark.slow
def test_eight_workers_through_the_proxy_keep_the_budget_and_few_connections(
        tmp_path, proxy, capsys):
    """The load test: 8 worker processes (threads capped) on a real PostgreSQL and a real
    `mlflow server`, once through the proxy and once straight to the database. The global
    budget is exact, no trial is lost or trained twice, and the proxy bounds PostgreSQL's
    connections."""
    import threading

    import optuna
    from test_reliability import free_port

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
        stop(server)
    with capsys.disabled():
        print(f"\nload test, 8 workers, 24 trials: {figures}")
    assert figures["proxy"]["workers"] >= 2 and figures["direct"]["workers"] >= 2
    # Through the proxy PostgreSQL sees the proxy's pool, not each worker's connections.
    assert figures["proxy"]["peak_connections"] < figures["direct"]["peak_connections"]


def test_a_second_proxy_on_a_taken_port_is_refused(tmp_path):
    """gRPC binds with SO_REUSEPORT: a second proxy would start on the same port and take
    half the workers to another database."""
    from test_reliability import free_port

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
        second = cli("storage-proxy", "--storage", f"sqlite:///{tmp_path / 'b.db'}", "--port",
                     port, cwd=tmp_path)
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=30)
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
    assert f"cannot serve on 127.0.0.1:{port} (Address already in use)" in second.stderr
    assert not (tmp_path / "b.db").exists()


def test_runs_cut_short_by_the_infrastructure_are_closed_with_a_reason(store):
    """Every kind a trial is lost by has a reason: a missing one left runs RUNNING."""
    import optuna

    from experiments.search.runs import trial_runs
    from experiments.search.trials.loop import INFRA
    from experiments.tracking.store import client

    c = client()
    exp = c.create_experiment("cut")
    run = c.create_run(exp, tags={"sweep": "cut", "trial": "0"})
    study = optuna.create_study(study_name="cut")
    trial = study.ask()
    study.set_user_attr("x", 1)
    study._storage.set_trial_user_attr(trial._trial_id, "run_id.has_aux", run.info.run_id)
    trial_runs.close_runs(c, "cut")(study, study.trials[0], INFRA)
    closed = c.get_run(run.info.run_id)
    assert closed.info.status == "KILLED" and closed.data.tags["fail_kind"] == INFRA
    assert closed.data.tags["failure_reason"] == trial_runs.REASONS[INFRA]
