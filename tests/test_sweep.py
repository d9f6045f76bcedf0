"""Sweeps end to end on real Optuna storage, a real MLflow store and the offline digits."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import runner
from conftest import ROOT, mlflow_client

TINY = ROOT / "sweeps" / "tiny.yaml"


def journal_study(folder: Path, name: str) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    path = folder / "mlruns" / "optuna" / "journal.log"
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage)


def sweep_runs(folder: Path, name: str):
    client = mlflow_client(folder)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    children = [r for r in runs if r.data.tags.get("sweep.parent") != "true"]
    return client, parents, children


def write_sweep(folder: Path, text: str) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


def test_tiny_sweep_end_to_end(store, capsys):
    assert runner.main(["sweep", str(TINY), "--n-trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "3/3 trials counted" in out and "python runner.py ui" in out
    client, parents, children = sweep_runs(store, "tiny")
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    study = journal_study(store, "tiny")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    by_run = {t.user_attrs["mlflow_run_id"]: t for t in trials}
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        trial = by_run[run.info.run_id]
        assert run.data.tags["trial"] == str(trial.number)
        assert run.data.tags["state"] == "COMPLETE" and run.data.tags["sweep"] == "tiny"
        assert float(run.data.params["learning_rate"]) == trial.params["learning_rate"]
        for key in ("train_loss", "test_accuracy", "grad_cosine"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == [1, 2]
        assert run.data.metrics["test_accuracy"] == trial.value
    best = study.best_trial
    assert parent.data.tags["best_trial"] == str(best.number)
    assert parent.data.tags["best_run_id"] == best.user_attrs["mlflow_run_id"]
    assert parent.data.tags["best_value"] == str(best.value)
    assert parent.data.tags["best.learning_rate"] == str(best.params["learning_rate"])
    assert parent.data.tags["end_reason"] == "budget"
    for run in children:  # the offline sample, said on every run
        assert "data.download=false" in run.data.tags["data.fallback"]
        assert run.data.tags["data.source"].endswith("mnist_5k.csv.gz")
    best_runs = [r for r in children if r.data.tags.get("best") == "true"]
    assert [r.info.run_id for r in best_runs] == [best.user_attrs["mlflow_run_id"]]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "sweep.yaml", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.png" in plots

    # The same command again: the budget is met, nothing new runs, the parent is reused.
    assert runner.main(["sweep", str(TINY), "--n-trials", "3"]) == 0
    _, parents_again, children_again = sweep_runs(store, "tiny")
    assert [p.info.run_id for p in parents_again] == [parent.info.run_id]
    assert len(children_again) == 3
    # A larger budget continues the same study.
    assert runner.main(["sweep", str(TINY), "--n-trials", "4"]) == 0
    assert len(journal_study(store, "tiny").get_trials()) == 4


def test_pruning_prunes_a_space_built_for_it(store):
    path = write_sweep(store, """
name: prune
method: random
n_trials: 8
seed: 1
pruner: {type: median, warmup_epochs: 0}
fixed: {epochs: 3, batch_size: 256, data.download: false}
parameters:
  learning_rate: {distribution: log_uniform_values, min: 1.0e-5, max: 0.5}
""")
    assert runner.main(["sweep", str(path)]) == 0
    study = journal_study(store, "prune")
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.state, t.params) for t in trials]
    # Pruned trials use up the budget: eight trials, not one more.
    assert len(trials) == 8 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                                    for t in trials)
    for t in pruned:  # a pruned trial did not fail
        assert "fail_reason" not in t.user_attrs and "fail_kind" not in t.user_attrs
    client, _, _children = sweep_runs(store, "prune")
    for t in pruned:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["state"] == "PRUNED"
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")]
        assert len(epochs) < 3


def test_paired_ablation_shares_start_and_differs_in_gradient(store):
    path = write_sweep(store, """
name: pair
method: random
n_trials: 1
pruner: {type: none}
fixed: {epochs: 1, batch_size: 128, data.download: false}
parameters:
  learning_rate: {values: [0.001]}
ablation: {grad_mode: [has_aux, stop_gradient, no_aux]}
""")
    assert runner.main(["sweep", str(path)]) == 0
    _client, _, children = sweep_runs(store, "pair")
    runs = {r.data.tags["grad_mode"]: r for r in children}
    assert set(runs) == {"has_aux", "stop_gradient", "no_aux"}
    assert len({r.data.tags["init_weights_digest"] for r in runs.values()}) == 1
    assert {r.data.tags["trial"] for r in runs.values()} == {"0"}
    assert runs["has_aux"].data.tags["role"] == "objective"
    # stop_gradient trains exactly like has_aux; no_aux follows another gradient.
    assert runs["stop_gradient"].data.metrics["train_loss"] == runs["has_aux"].data.metrics[
        "train_loss"]
    # no_aux follows another gradient: at lr 0.001 it diverges within the epoch (seeded,
    # deterministic on CPU), and a variant that diverges is a result, not a failure.
    no_aux = runs["no_aux"]
    assert no_aux.data.tags["outcome"] == "diverged" and no_aux.info.status == "FINISHED"
    assert 1 <= int(no_aux.data.tags["diverged_step"]) <= 32
    assert "train_loss" not in no_aux.data.metrics
    assert runs["has_aux"].data.metrics["grad_cosine"] < 0.99
    trial = journal_study(store, "pair").get_trials()[0]
    assert trial.state == TrialState.COMPLETE


def cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([sys.executable, str(ROOT / "runner.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout=180.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.3)
    return False


# Trials long enough (about 2 s of training) that a signal sent while one trains lands in
# its training, not between trials: the tiny sweep trains in a few tenths of a second.
LONGER = ("--set", "epochs=4", "--set", "batch_size=16")


def one_done_one_running(folder: Path) -> bool:
    """A trial has finished and the next one is training: a good moment for a fault."""
    try:
        trials = journal_study(folder, "tiny").get_trials()
    except Exception:  # the journal may not exist yet
        return False
    states = [t.state for t in trials]
    # The run id is recorded just before training starts; without it the kill could land
    # before the run exists, and the test would not see a run closed as KILLED.
    return (TrialState.COMPLETE in states and states[-1] == TrialState.RUNNING
            and "run_id.has_aux" in trials[-1].user_attrs)


@pytest.mark.slow
def test_kill_9_mid_sweep_then_resume(tmp_path):
    args = ("sweep", str(TINY), "--n-trials", "4")
    proc = cli(*args, cwd=tmp_path)
    assert wait_for(lambda: one_done_one_running(tmp_path)), proc.communicate()[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    again = cli(*args, cwd=tmp_path)
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output
    assert "left RUNNING by a dead process" in output
    trials = journal_study(tmp_path, "tiny").get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    crashed = [t for t in trials if t.user_attrs.get("fail_kind") == "crashed"]
    assert len(crashed) == 1
    retries = [t for t in trials if t.user_attrs.get("retry_of") == crashed[0].number]
    assert len(retries) == 1 and retries[0].params == crashed[0].params
    client, parents, children = sweep_runs(tmp_path, "tiny")
    assert not [r for r in children + parents if r.info.status == "RUNNING"]
    killed = client.get_run(crashed[0].user_attrs["run_id.has_aux"])
    assert killed.info.status == "KILLED"


@pytest.mark.slow
def test_workers_share_one_study_pinned_one_per_core(tmp_path):
    proc = cli("sweep", str(TINY), "--n-trials", "6", "--workers", "2", cwd=tmp_path)
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
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_marks_and_resumes(tmp_path, sig):
    args = ("sweep", str(TINY), "--n-trials", "3", *LONGER)
    proc = cli(*args, cwd=tmp_path)
    assert wait_for(lambda: one_done_one_running(tmp_path)), proc.communicate()[0]
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "rerun the same command to resume" in output
    trials = journal_study(tmp_path, "tiny").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if t.user_attrs.get("fail_kind") == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0].state == TrialState.FAIL
    client, parents, children = sweep_runs(tmp_path, "tiny")
    assert client.get_run(interrupted[0].user_attrs["run_id.has_aux"]).info.status == "KILLED"
    assert not [r for r in parents + children if r.info.status == "RUNNING"]
    again = cli(*args, cwd=tmp_path)
    assert again.wait(timeout=600) == 0
    trials = journal_study(tmp_path, "tiny").get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    retry = [t for t in trials if t.user_attrs.get("retry_of") == interrupted[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE


def trials_running_with_runs(folder: Path, name: str, n: int) -> bool:
    try:
        trials = journal_study(folder, name).get_trials()
    except Exception:  # the journal may not exist yet
        return False
    running = [t for t in trials if t.state == TrialState.RUNNING
               and "run_id.has_aux" in t.user_attrs]
    return len(running) >= n and any(t.state == TrialState.COMPLETE for t in trials)


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


@pytest.mark.slow
def test_parent_notices_that_every_worker_died(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    args = [sys.executable, str(ROOT / "runner.py"), "sweep", str(TINY), "--n-trials", "6",
            "--workers", "2"]
    result = subprocess.run(args, cwd=tmp_path, env={**env, "RUNNER_FAULT": "run_started:2"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "worker processes died" in result.stderr and "Traceback" not in result.stderr
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


ABLATION = """
name: pairs
method: random
n_trials: 2
pruner: {type: none}
fixed: {epochs: 4, batch_size: 16, learning_rate: 0.01, data.download: false}
parameters:
  seed: {values: [1, 2, 3]}
ablation: {grad_mode: [has_aux, stop_gradient]}
"""


def second_variant_training(folder: Path) -> bool:
    try:
        trials = journal_study(folder, "pairs").get_trials()
    except Exception:
        return False
    return any(t.state == TrialState.RUNNING and "run_id.stop_gradient" in t.user_attrs
               for t in trials)


@pytest.mark.slow
def test_interrupted_ablation_trial_is_not_a_result(tmp_path):
    from experiments.search import compare

    path = write_sweep(tmp_path, ABLATION)
    proc = cli("sweep", str(path), cwd=tmp_path)
    assert wait_for(lambda: second_variant_training(tmp_path)), proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    client = mlflow_client(tmp_path)
    (lost,) = [t for t in journal_study(tmp_path, "pairs").get_trials()
               if t.user_attrs.get("fail_kind") == "interrupted"]
    first = client.get_run(lost.user_attrs["run_id.has_aux"])
    assert first.info.status == "FINISHED"  # it did train to the end...
    assert first.data.tags["state"] == "FAIL"  # ...but is not a result of the sweep
    assert first.data.tags["fail_kind"] == "interrupted"
    second = client.get_run(lost.user_attrs["run_id.stop_gradient"])
    assert second.info.status == "KILLED" and second.data.tags["state"] == "FAIL"
    frame = compare.runs("pairs", client)
    assert set(frame.loc[frame["trial"] == lost.number, "fail_kind"]) == {"interrupted"}
    assert lost.number not in set(compare.paired(frame)["trial"])

    again = cli("sweep", str(path), cwd=tmp_path)
    assert again.wait(timeout=600) == 0
    pairs = compare.paired(compare.runs("pairs", mlflow_client(tmp_path)))
    assert len(pairs) == 2 and lost.number not in set(pairs["trial"])


@pytest.mark.slow
def test_a_trial_that_names_no_worker_is_recovered(tmp_path):
    """A worker killed between creating its trial and recording itself on it."""
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path / "mlruns" / "optuna" / "journal.log"
    path.parent.mkdir(parents=True)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    orphan = optuna.create_study(study_name="tiny", storage=storage,
                                 direction="maximize").ask()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([sys.executable, str(ROOT / "runner.py"), "sweep", str(TINY),
                             "--n-trials", "2"], cwd=tmp_path, env={**env, "RUNNER_GRACE_S": "2"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    trials = journal_study(tmp_path, "tiny").get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    assert trials[orphan.number].user_attrs["fail_kind"] == "crashed"
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


@pytest.mark.slow
def test_a_grid_with_two_workers_visits_every_point_once(tmp_path):
    path = write_sweep(tmp_path, """
name: grid2
method: grid
n_trials: 100
pruner: {type: none}
fixed: {epochs: 1, batch_size: 1000, data.download: false}
parameters:
  seed: {values: [0, 1, 2, 3, 4, 5, 6, 7]}
""")
    proc = cli("sweep", str(path), "--workers", "2", cwd=tmp_path)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    assert "8/8 trials counted" in output
    trials = journal_study(tmp_path, "grid2").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == list(range(8))
    assert len({t.user_attrs["worker"] for t in complete}) == 2
    # Anything else is a queued duplicate that was turned away, never a second training.
    for t in trials:
        if t.state != TrialState.COMPLETE:
            assert t.user_attrs["fail_kind"] in ("duplicate", "no_grid_point"), t
    _client, _, children = sweep_runs(tmp_path, "grid2")
    assert sorted(int(r.data.params["seed"]) for r in children) == list(range(8))


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
