"""Worker processes: one per usable core by default, pinned, forked where they can be;
the parent notices workers that die, and no worker outlives its parent."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from helpers import (
    ROOT,
    SMALL_SWEEP,
    TINY,
    check_complete,
    env_without_tracking,
    journal_study,
    mlflow_client,
    run_cli,
    said,
    start_merged,
    sweep_cmd,
    sweep_runs,
    wait_for,
    write_sweep,
)


@pytest.mark.slow
def test_workers_share_one_study_pinned_one_per_core(tmp_path):
    proc = start_merged("sweep", str(TINY), "--n-trials", "6", "--workers", "2", cwd=tmp_path)
    pinned = {}

    def two_workers_running() -> bool:
        try:
            trials = journal_study(tmp_path, "tiny").get_trials()
        except Exception:
            return False
        for t in trials:
            pid = int(t.user_attrs.get("worker", ":0").rpartition(":")[2])
            if t.state == TrialState.RUNNING and pid not in pinned:
                with contextlib.suppress(OSError):  # it may just have ended
                    pinned[pid] = os.sched_getaffinity(pid)
        return len(pinned) == 2

    assert wait_for(two_workers_running), proc.communicate()[0]
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    cores = sorted(os.sched_getaffinity(0))
    assert sorted(pinned.values(), key=min) == [{cores[0]}, {cores[1]}]
    trials = journal_study(tmp_path, "tiny").get_trials()
    counted = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(counted) == 6
    assert len({t.params["learning_rate"] for t in counted}) == 6
    assert len({t.user_attrs["worker"] for t in counted}) == 2
    _client, parents, children = sweep_runs(tmp_path, "tiny")
    assert len(parents) == 1 and len(children) == 6
    run_ids = {t.user_attrs["mlflow_run_id"] for t in counted}
    assert run_ids == {r.info.run_id for r in children}
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id


@pytest.mark.slow
def test_parent_notices_that_every_worker_died(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    args = [sys.executable, str(ROOT / "runner.py"), "sweep", str(TINY), "--n-trials", "6",
            "--workers", "2"]
    result = subprocess.run(args, cwd=tmp_path, env={**env, "RUNNER_FAULT": "run_started:2"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    assert said(result.stderr)[-1] == (
        "error: worker processes died before the budget was met; nothing finished is lost, "
        "and a trial they cut short trains again: rerun the same command to resume")
    assert "Traceback" not in result.stderr
    trials = journal_study(tmp_path, "tiny").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len([t for t in trials if t.user_attrs.get("fail_kind") == "crashed"]) == 2
    _client, parents, children = sweep_runs(tmp_path, "tiny")
    assert not [r for r in parents + children if r.info.status == "RUNNING"]
    assert parents[0].info.status == "FAILED"
    assert parents[0].data.tags["end_reason"] == "workers died"
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = journal_study(tmp_path, "tiny").get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6


@pytest.mark.slow
def test_auto_starts_no_more_workers_than_trials_left(tmp_path):
    done = run_cli("sweep", str(TINY), "--n-trials", "1", cwd=tmp_path,
                   env={"RUNNER_WORKERS": None})
    assert done.returncode == 0, done.stderr
    trials = journal_study(tmp_path, "tiny").trials
    assert [t.state.name for t in trials] == ["COMPLETE"]


@pytest.mark.slow
def test_runner_workers_sets_the_default_and_the_flag_wins(tmp_path):
    done = run_cli("sweep", str(TINY), "--n-trials", "2", cwd=tmp_path,
                   env={"RUNNER_WORKERS": "1"})
    assert done.returncode == 0, done.stderr
    assert len({t.user_attrs["worker"] for t in journal_study(tmp_path, "tiny").trials}) == 1


@pytest.mark.parametrize(("flags", "env", "said"), [
    (["--workers", "0"], {"RUNNER_WORKERS": None},
     "--workers: expected an integer from 1 to 64, or auto, got '0'"),
    (["--workers", "two"], {"RUNNER_WORKERS": None},
     "--workers: expected an integer from 1 to 64, or auto"),
    ([], {"RUNNER_WORKERS": "lots"}, "RUNNER_WORKERS: expected an integer from 1 to 64, or "
                                     "auto, got 'lots'"),
])
def test_bad_worker_counts_are_refused(tmp_path, flags, env, said):
    done = run_cli("sweep", str(TINY), *flags, cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_workers_stop_when_their_parent_is_killed(tmp_path):
    """kill -9 of the sweep's process: its forked workers get SIGTERM (PR_SET_PDEATHSIG),
    close their runs and exit, instead of training on unseen; the rerun resumes."""
    import os
    import subprocess
    import sys

    path = write_sweep(tmp_path, SMALL_SWEEP.replace("n_trials: 5", "n_trials: 40")
                       .replace("epochs: 1", "epochs: 3"))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                              "RUNNER_WORKERS")}
    parent = subprocess.Popen([sys.executable, str(ROOT / "runner.py"), "sweep", str(path),
                               "--workers", "2"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(1)
        journal = tmp_path / "mlruns" / "optuna" / "journal.log"
        if journal.exists() and len([t for t in journal_study(tmp_path, "m").trials
                                     if t.state.is_finished()]) >= 2:
            break
    children = [int(p) for p in subprocess.run(
        ["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()]
    assert len(children) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.5)
    assert not any(Path(f"/proc/{c}").exists() for c in children)
    done = run_cli("sweep", str(path), "--workers", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trials = journal_study(tmp_path, "m").trials
    assert sum(t.state.name == "COMPLETE" for t in trials) == 40
    client = mlflow_client(tmp_path)
    assert not [r for r in client.search_runs(
        [client.get_experiment_by_name("m").experiment_id]) if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_four_local_workers(tmp_path):
    result = subprocess.run(sweep_cmd(str(TINY), "--n-trials", "10", "--workers", "4"),
                            cwd=tmp_path, env=env_without_tracking(), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr
    trials = journal_study(tmp_path, "tiny").get_trials()
    client, parents, children = sweep_runs(tmp_path, "tiny")
    check_complete(trials, client, parents + children, budget=10, epochs=2)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len({t.params["learning_rate"] for t in complete}) == 10
    assert len(children) == 10 and len(parents) == 1
    assert len({t.user_attrs["worker"] for t in complete}) == 4



@pytest.mark.parametrize("back", [True, False], ids=["back", "gave up"])
def test_the_parent_says_a_workers_outage_once_and_its_end_even_as_the_worker_exits(
        tmp_path, back):
    """A worker waiting out an outage leaves word; the parent says it once, and says the
    end once the word is taken back. A worker that saw the server back could meet the
    budget and exit within the parent's one-second look: `waiting:` was said and `back
    after` never (CI, reproduced). A worker that gave up leaves its word: no `back`."""
    from experiments.runtime import workers

    heard = tmp_path / "heard"
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        heard.write_text(line, encoding="utf-8")

    def body(i: int) -> int:
        workers.leave_word("waiting", "waiting: server unreachable")
        end = time.time() + 30
        while not heard.exists() and time.time() < end:  # until the parent has said it
            time.sleep(0.05)
        if back:
            workers.leave_word("waiting", None)
        return 0  # and exit at once, as a worker whose budget is met

    died = workers.fork_workers(1, body, recover=lambda: 0, say=say, pin=False)
    assert died == []
    assert lines[0] == "waiting: server unreachable", lines
    if back:
        assert len(lines) == 2 and lines[1].startswith("back after "), lines
        assert lines[1].endswith(": the sweep goes on"), lines
    else:
        assert lines == ["waiting: server unreachable"]


def test_no_more_workers_start_than_trials_are_left(tmp_path):
    """`--workers 2` with one trial left trains it in one process, and with the budget met
    starts nothing: the workers used to start, compile for ~11 s and stop (review)."""
    first = run_cli("sweep", str(TINY), "--n-trials", "1", "--workers", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    one_left = run_cli("sweep", str(TINY), "--n-trials", "2", "--workers", "2", cwd=tmp_path)
    assert one_left.returncode == 0, one_left.stderr[-3000:]
    assert "workers:" not in one_left.stderr, one_left.stderr
    assert "2/2 trials counted" in one_left.stdout
    again = run_cli("sweep", str(TINY), "--n-trials", "2", "--workers", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "the budget is met: nothing to train" in again.stderr
    assert "workers:" not in again.stderr and "compiling" not in again.stderr, again.stderr
    assert "2/2 trials counted" in again.stdout
