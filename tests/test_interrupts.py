"""Ctrl-C, SIGTERM and their timing: a signal ends a sweep as what happened, says what it
waits for, and never surfaces inside MindSpore or as a worker's traceback."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from helpers import (
    LONGER,
    ROOT,
    TINY,
    journal_study,
    run,
    running_with_runs,
    said,
    start,
    sweep_runs,
    trials_of,
    wait_for,
)

pytestmark = pytest.mark.slow  # processes and signals


@pytest.mark.parametrize("workers, moment", [("2", "workers_done:1"),
                                             ("1", "trial_counted:3")])
def test_ctrl_c_after_the_budget_is_met_ends_as_met(tmp_path, workers, moment):
    """The signal comes once every trial counted: nothing is cut short, so the sweep ends
    FINISHED with its budget met and exit 0 (it used to end KILLED, 'interrupted', 130)."""
    done = run("sweep", str(TINY), "--n-trials", "3", "--workers", workers, cwd=tmp_path,
               RUNNER_FAULT=f"{moment}:interrupt")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3/3 trials counted" in done.stdout and "Traceback" not in done.stderr
    assert "Ctrl-C came once every trial had counted: nothing was cut short" in done.stderr
    _, parents, children = sweep_runs(tmp_path, "tiny")
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["end_reason"] == "budget"
    assert [r.info.status for r in children] == ["FINISHED"] * 3


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    """Before the workers are forked: none starts, and the command says one line."""
    done = run("sweep", str(TINY), "--workers", "2", cwd=tmp_path,
               RUNNER_FAULT="forking:1:interrupt")
    assert done.returncode == 130, done.stderr[-3000:]
    lines = said(done.stderr)
    assert lines == ["interrupted: finished work is saved; rerun the same command to resume"]
    # No worker started, so none trained (they used to, and a worker that took its
    # parent's SIGTERM for a second Ctrl-C died with a traceback).
    assert trials_of(tmp_path, "tiny") == []


def test_ctrl_c_as_the_workers_start_stops_them_without_a_traceback(tmp_path):
    """The terminal's Ctrl-C reaches the parent and every worker at once, as they start:
    each worker counts its own signal, so none takes the parent's for a second Ctrl-C."""
    for delay in (0.0, 0.15, 0.4):
        folder = tmp_path / f"at{delay}"
        folder.mkdir()
        proc = start("sweep", str(TINY), "--workers", "2", *LONGER, cwd=folder, group=True)
        # The workers start right after the store's first trial is asked for.
        assert _wait_for_file(folder / "mlruns" / "optuna" / "journal.log", proc)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 130), err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert not [t for t in trials_of(folder, "tiny") if t.state.name == "RUNNING"]
        _, parents, children = sweep_runs(folder, "tiny")
        assert not [r for r in parents + children if r.info.status == "RUNNING"]


def _wait_for_file(path, proc, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if path.exists():
            return True
        time.sleep(0.02)
    return False


def test_a_second_signal_never_surfaces_inside_mindspores_compiler(tmp_path):
    """Two Ctrl-C while a graph compiles: the interrupt comes once the graph is built,
    not from inside it (MindSpore printed a 30-line ANALYZER trace with the
    KeyboardInterrupt, and wrote rank_0/om/analyze_fail.ir into the user's folder)."""
    script = textwrap.dedent("""
        import os, signal, threading, time
        from experiments.runtime import interrupts
        interrupts.install()
        from experiments.core.data import load_offline_sample
        from experiments.core.train import Prepared, Trainer
        data = Prepared.from_mnist(load_offline_sample())
        trainer = Trainer("has_aux")
        def twice():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
        threading.Timer(0.3, twice).start()
        start = time.time()
        try:
            trainer.compile_for(data, 64)
            print("no interrupt")
        except KeyboardInterrupt:
            print("interrupted after", round(time.time() - start, 2), "s")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "GLOG_v": "3"})
    assert done.stdout.startswith("interrupted after"), (done.stdout, done.stderr[-3000:])
    assert "ANALYZER" not in done.stderr and "KeyboardInterrupt" not in done.stderr, \
        done.stderr[-3000:]
    assert not (tmp_path / "rank_0").exists()


def test_an_interrupted_sweep_says_what_it_waits_for(tmp_path):
    """Ctrl-C is met with a line within about a second, not with seconds of silence."""
    proc = start("sweep", str(TINY), "--n-trials", "6", "--workers", "2", *LONGER,
                 cwd=tmp_path, group=True)
    assert wait_for(lambda: running_with_runs(tmp_path, "tiny", 2)), proc.communicate()
    sent = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    lines = []
    for line in proc.stderr:  # as the terminal shows them
        lines.append((time.time() - sent, line.rstrip()))
    proc.wait(timeout=120)
    assert proc.returncode == 130, lines
    ended = lines[-1][0]
    # What it waits for when the line is due: its workers, or by then the parent run.
    said = [at for at, line in lines if line.startswith("stopping: waiting for the ")]
    if ended > 1.5:  # a stop that takes a while says so, within about a second
        assert said and said[0] < 1.5, lines
    assert lines[-1][1] == ("interrupted: finished work is saved; rerun the same command to "
                            "resume"), lines


@pytest.mark.slow
def test_ctrl_c_with_workers_closes_every_run(tmp_path):
    """A terminal's Ctrl-C reaches the whole foreground process group at once."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "runner.py"), "sweep", str(TINY),
                             "--n-trials", "40", "--workers", "2", *LONGER], cwd=tmp_path,
                            env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert wait_for(lambda: trials_running_with_runs(tmp_path, "tiny", 2)), \
        proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    trials = journal_study(tmp_path, "tiny").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # Each worker was training when the signal came (a trial may just have finished its
    # training and be logging its model: that one completes).
    interrupted = [t for t in trials if t.user_attrs.get("fail_kind") == "interrupted"]
    assert 1 <= len(interrupted) <= 2
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.WAITING) or t in interrupted, t
        # The parent prints the lines: every trial counted before the signal has one.
        if t.state == TrialState.COMPLETE:
            assert f"trial {t.number:>3}  COMPLETE" in output, output
    assert output.count("interrupted: finished work is saved") == 1, output
    _client, parents, children = sweep_runs(tmp_path, "tiny")
    assert not [r.info.run_id for r in parents + children if r.info.status == "RUNNING"]
    assert parents[0].info.status == "KILLED"
    assert parents[0].data.tags["end_reason"] == "interrupted"


def trials_running_with_runs(folder: Path, name: str, n: int) -> bool:
    try:
        trials = journal_study(folder, name).get_trials()
    except Exception:  # the journal may not exist yet
        return False
    running = [t for t in trials if t.state == TrialState.RUNNING
               and "run_id.has_aux" in t.user_attrs]
    return len(running) >= n and any(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.slow
def test_a_double_ctrl_c_with_workers_stops_them_too(tmp_path):
    """The second signal used to end the parent before it told the workers, which trained
    on, unseen, in their own process group."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "runner.py"), "sweep", str(TINY),
                             "--n-trials", "40", "--workers", "2", *LONGER], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    assert wait_for(lambda: trials_running_with_runs(tmp_path, "tiny", 2))
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=180) == 130
    trials = journal_study(tmp_path, "tiny").get_trials()
    workers = {int(t.user_attrs["worker"].rpartition(":")[2]) for t in trials
               if "worker" in t.user_attrs}
    assert len(workers) == 2

    def alive(pid: int) -> bool:
        try:
            return b"runner.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    assert not [pid for pid in workers if alive(pid)], "workers outlived their parent"
    time.sleep(3)  # nothing goes on training behind the user's back
    after = journal_study(tmp_path, "tiny").get_trials()
    assert len(after) == len(trials)
    assert not [t for t in after if t.state == TrialState.RUNNING]
    _client, parents, children = sweep_runs(tmp_path, "tiny")
    assert not [r.info.run_id for r in parents + children if r.info.status == "RUNNING"]

