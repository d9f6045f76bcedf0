"""Sweeps end to end on real Optuna storage, a real MLflow store and the offline digits."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, mlflow_client
from optuna.trial import TrialState

import runner

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
    pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
    assert pruned, [(t.state, t.params) for t in study.get_trials()]
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
    no_aux = runs["no_aux"]
    if no_aux.data.tags.get("outcome") == "diverged":
        assert no_aux.info.status == "FINISHED" and int(no_aux.data.tags["diverged_step"]) >= 1
    else:
        assert no_aux.data.metrics["train_loss"] != runs["has_aux"].data.metrics["train_loss"]
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


@pytest.mark.parametrize("workers", [2])
def test_workers_share_one_study(tmp_path, workers):
    proc = cli("sweep", str(TINY), "--n-trials", "6", "--workers", str(workers), cwd=tmp_path)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    trials = journal_study(tmp_path, "tiny").get_trials()
    counted = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(counted) == 6
    assert len({t.params["learning_rate"] for t in counted}) == 6
    assert len({t.user_attrs["worker"] for t in counted}) == workers
    _client, parents, children = sweep_runs(tmp_path, "tiny")
    assert len(parents) == 1 and len(children) == 6
    run_ids = {t.user_attrs["mlflow_run_id"] for t in counted}
    assert run_ids == {r.info.run_id for r in children}
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_marks_and_resumes(tmp_path, sig):
    args = ("sweep", str(TINY), "--n-trials", "3")
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
