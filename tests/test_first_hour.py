"""The first hour: the sweep visible while it runs, `status`, and a terminal without noise.

A real two-worker sweep runs in a subprocess as a user starts it; the test reads the
parent run from the SQLite store and `runner.py status` while the workers train.
"""

from __future__ import annotations

import fcntl
import itertools
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_reliability import database, postgres  # noqa: F401 - the fixture, shared

from conftest import ROOT, mlflow_client, run_cli

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
# What MLflow and Optuna print when something is not handled: none may reach the user.
NOISE = re.compile(r"warn|deprecat|View run|View experiment|cloudpickle|Traceback|"
                   r"ExperimentalWarning|UserWarning|\[W \d", re.I)


def parent_of(folder: Path, experiment: str):
    """The sweep's parent run, or None before it exists (or before the store does)."""
    if not (folder / "mlruns" / "mlflow.db").exists():
        return None
    # As the runner's own readers do: under the store's lock, so that this client cannot
    # run MLflow's migrations on a store the sweep is still creating.
    with open(folder / "mlruns" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = mlflow_client(folder)
        client.search_experiments(max_results=1)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], "tags.`sweep.parent` = 'true'")
    return runs[0] if runs else None


@pytest.mark.slow
def test_the_parent_run_tells_the_story_while_two_workers_run(tmp_path):
    (tmp_path / "live.yaml").write_text(LIVE)
    out = tmp_path / "sweep.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen([sys.executable, str(ROOT / "runner.py"), "sweep", "live.yaml",
                                 "--workers", "2"], cwd=tmp_path, stdout=sink,
                                stderr=subprocess.STDOUT)
    seen, status_running = [], None
    try:
        end = time.time() + 600
        while proc.poll() is None and time.time() < end:
            parent = parent_of(tmp_path, "live")
            if parent is not None:
                m = parent.data.metrics
                if "trials_complete" in m and proc.poll() is None:
                    seen.append((m["trials_complete"], m.get("best_test_accuracy"),
                                 m.get("trials_running"), parent.data.tags.get("best_run_id"),
                                 parent.data.tags.get("mlflow.note.content", "")))
                # Between two trials a worker runs none: ask again until one is running.
                if (status_running is None or "running: trial" not in status_running.stdout) \
                        and 1 <= m.get("trials_complete", 0) < 5:
                    status_running = run_cli("status", "live.yaml", cwd=tmp_path)
            time.sleep(0.5)
        assert proc.wait(timeout=60) == 0, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    # Before the end, the parent already showed progress: a best value and counts that grew.
    assert seen, "the parent run showed no progress while the sweep ran"
    during = [s for s in seen if 1 <= s[0] < 6]
    assert during and during[0][1] is not None and during[0][3], seen[:3]
    assert len({s[0] for s in seen}) >= 2, "the counts did not advance during the sweep"
    assert "of 6 trials counted" in during[0][4] and "| rank | trial |" in during[0][4]

    client = mlflow_client(tmp_path)
    parent = parent_of(tmp_path, "live")
    history = client.get_metric_history(parent.info.run_id, "best_test_accuracy")
    steps = sorted(h.step for h in history)
    assert steps[-1] == 6 and len(set(steps)) >= 3, steps  # step = trials counted
    best = [h.value for h in sorted(history, key=lambda h: (h.step, h.timestamp))]
    assert all(b >= a for a, b in itertools.pairwise(best)), best  # never worse
    assert parent.data.metrics["trials_complete"] == 6
    assert parent.data.metrics["trials_running"] == 0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.png" in artifacts

    # status while it ran: trials counted, someone running with worker, host and age.
    assert status_running is not None and status_running.returncode == 0, status_running
    text = status_running.stdout
    assert re.search(r"sweep 'live' .*: [1-5] of 6 trials counted, [1-5] left", text), text
    assert re.search(r"running: trial \d+ on \S+ pid \d+ \(alive\), started \d+s ago", text), \
        text
    assert "best so far: trial" in text and "ETA: about" in text and "/ 2 workers)" in text, \
        text
    # ... and after it: done.
    after = run_cli("status", "live.yaml", cwd=tmp_path)
    assert after.returncode == 0 and "6 of 6 trials counted, 0 left" in after.stdout
    assert "trials: 6 COMPLETE" in after.stdout and "ETA: done" in after.stdout, after.stdout

    # The terminal: one line per trial, a summary with the UI link, and no warnings.
    lines = out.read_text().splitlines()
    noise = [line for line in lines if NOISE.search(line)]
    assert not noise, noise
    assert sum(line.startswith("trial ") for line in lines) == 6, lines
    assert sum(line.startswith("data: ") for line in lines) == 1, lines  # not per worker
    assert any("workflowType=machine_learning&orderByKey=metrics.%60test_accuracy%60"
               "&orderByAsc=false" in line for line in lines), lines


@pytest.mark.slow
def test_quiet_prints_only_the_summary_and_a_sweep_has_no_warnings(tmp_path):
    (tmp_path / "one.yaml").write_text(LIVE.replace("name: live", "name: one")
                                       .replace("n_trials: 6", "n_trials: 2"))
    loud = run_cli("sweep", "one.yaml", "--n-trials", "1", cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    output = (loud.stdout + loud.stderr).splitlines()
    assert not [line for line in output if NOISE.search(line)], output
    # status counts against the budget the sweep ran with, or the one it is given.
    ran = run_cli("status", "one.yaml", cwd=tmp_path)
    assert "1 of 1 trials counted, 0 left" in ran.stdout, ran
    asked = run_cli("status", "one.yaml", "--n-trials", "4", cwd=tmp_path)
    assert "1 of 4 trials counted, 3 left" in asked.stdout, asked
    # A file that asks another question is refused, as `sweep` refuses it.
    (tmp_path / "other.yaml").write_text((tmp_path / "one.yaml").read_text().replace(
        "max: 0.3", "max: 0.5"))
    other = run_cli("status", "other.yaml", cwd=tmp_path)
    assert other.returncode == 2 and "was created for another sweep" in other.stderr, other
    quiet = run_cli("sweep", "one.yaml", "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert not quiet.stderr.strip(), quiet.stderr
    assert not any(line.startswith("trial ") for line in quiet.stdout.splitlines())
    assert "top 2 by test_accuracy" in quiet.stdout and "workflowType=machine_learning" in \
        quiet.stdout, quiet.stdout


def test_status_of_a_sweep_that_never_ran_is_exit_2(tmp_path):
    (tmp_path / "never.yaml").write_text(LIVE.replace("name: live", "name: never"))
    result = run_cli("status", "never.yaml", cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stderr.strip().count("\n") == 0 and "never.yaml" in result.stderr
    assert "has never run here" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mlruns").exists(), "status wrote something"


def test_status_of_a_bad_file_is_exit_2(tmp_path):
    (tmp_path / "bad.yaml").write_text(LIVE.replace("n_trials: 6", "n_trials: -1"))
    result = run_cli("status", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "bad.yaml" in result.stderr and "n_trials" in \
        result.stderr, result.stderr
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_status_reads_a_sweep_on_postgres(postgres, tmp_path):  # noqa: F811
    storage = database(postgres, "optuna_status")
    (tmp_path / "pg.yaml").write_text(LIVE.replace("name: live", "name: pgsweep")
                                      .replace("n_trials: 6", "n_trials: 2"))
    done = run_cli("sweep", "pg.yaml", "--storage", storage, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = run_cli("status", "pg.yaml", "--storage", storage, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sweep 'pgsweep' (postgresql" in result.stdout and "2 of 2 trials counted" in \
        result.stdout, result.stdout
    assert "best so far: trial" in result.stdout and "ETA: done" in result.stdout
    empty = database(postgres, "optuna_none")
    missing = run_cli("status", "pg.yaml", "--storage", empty, cwd=tmp_path)
    assert missing.returncode == 2 and "has never run here" in missing.stderr
    import sqlalchemy as sa

    engine = sa.create_engine(empty)
    try:
        assert sa.inspect(engine).get_table_names() == [], "status created Optuna's schema"
    finally:
        engine.dispose()


def test_status_and_dry_run_write_no_sqlite_storage(tmp_path):
    (tmp_path / "s.yaml").write_text(LIVE)
    for args in (["status", "s.yaml"], ["sweep", "s.yaml", "--dry-run"]):
        result = run_cli(*args, "--storage", "sqlite:///optuna.db", cwd=tmp_path)
        assert result.returncode == (2 if args[0] == "status" else 0), result
        assert not (tmp_path / "optuna.db").exists(), args
    secret = run_cli("status", "s.yaml", "--storage", "postgresql://u:hunter2@127.0.0.1:1/x",
                     cwd=tmp_path)
    assert secret.returncode == 2 and "u:***@127.0.0.1" in secret.stderr
    assert "hunter2" not in secret.stderr + secret.stdout


def test_ui_on_a_taken_port_is_exit_2_and_writes_nothing(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("ui", "--port", str(port), cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result
    assert result.stderr.strip() == f"error: --port {port}: 127.0.0.1:{port} is in use " \
        "(another server?); choose another --port", result.stderr
    assert not (tmp_path / "mlruns").exists()


def test_a_long_description_and_space_fit_in_the_note(tmp_path):
    """MLflow cuts a tag value over 8000 characters, with a warning at every update."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from experiments.search.runs import story
    from experiments.search.spec.sweepfile import load

    values = [round(0.001 * i, 3) for i in range(1, 1501)]
    (tmp_path / "big.yaml").write_text(
        f"name: big\nmethod: grid\ndescription: {'why ' * 1500}\n"
        f"parameters:\n  learning_rate: {{values: {values}}}\n")
    spec = load(str(tmp_path / "big.yaml"))
    dist = {"learning_rate": CategoricalDistribution(values)}
    done = [optuna.trial.create_trial(params={"learning_rate": v}, distributions=dist,
                                      value=0.5 + i / 100, user_attrs={"mlflow_run_id": "r"})
            for i, v in enumerate(values[:7])]
    for i, t in enumerate(done):
        t.number = i
    text = story.describe(spec, "1", done, {"complete": 7, "pruned": 0, "failed": 0,
                                           "running": 0}, 7, 1500)
    assert len(text) <= 8000
    assert "**Best so far: test_accuracy 0.5600**, trial 6" in text
    assert "| rank | trial |" in text and "[trial-6-run](#/experiments/1/runs/r)" in text
    assert "| 1 | 6 | 0.5600 | 0.007 |" in text, text[-800:]


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


def test_a_reader_that_stops_early_is_no_error(tmp_path):
    (tmp_path / "s.yaml").write_text(LIVE)
    # `runner.py sweep --dry-run | head -1`, as a shell runs it; `true` reads nothing and
    # is gone long before Python has imported, so the write always meets a closed pipe.
    result = subprocess.run(f"{sys.executable} {ROOT / 'runner.py'} sweep s.yaml --dry-run "
                            "| true; echo ${PIPESTATUS[0]}", shell=True, cwd=tmp_path,
                            capture_output=True, text=True, executable="/bin/bash",
                            timeout=120)
    assert result.stdout.splitlines()[-1] == "0", result
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def test_a_reader_waits_for_the_process_creating_the_store(store):
    """A second client that opens a store still being created runs MLflow's migrations
    again and corrupts it for good; readers (compare, ui, predict) wait for the creator."""
    from experiments.tracking.store import client

    client()  # the store exists; now a creator holds the lock as if still migrating
    with open(store / "mlruns" / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reader = subprocess.Popen([sys.executable, str(ROOT / "runner.py"), "compare",
                                   "--experiment", "none"], cwd=store, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(8)  # far longer than the reader needs to start and ask
        assert reader.poll() is None, reader.communicate()
    _out, err = reader.communicate(timeout=60)
    assert reader.returncode == 2 and "no MLflow experiment named 'none'" in err, err
