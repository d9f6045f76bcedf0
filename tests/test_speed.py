"""Sweep speed (issue 13): forked workers, `--workers auto`, `models:`, the store template.

What makes a sweep faster must not change its answer: the main job with two workers gives
the one-worker trials, values and params; a model is kept exactly as `models:` says; a
store made from the template is MLflow's own.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest
from test_sweep import journal_study, write_sweep

from conftest import ROOT, mlflow_client, run_cli

LR = ROOT / "sweeps" / "lr.yaml"
TINY = ROOT / "sweeps" / "tiny.yaml"


def answer(folder: Path, name: str) -> list:
    return sorted((t.number, t.state.name, t.value, sorted(t.params.items()))
                  for t in journal_study(folder, name).trials)


def test_two_workers_give_the_one_worker_answer(tmp_path):
    """sweeps/lr.yaml reads its history twice: TPE after 10 random trials, and a median
    pruner from the second epoch. Without the ordering, two workers pruned trial 3 an
    epoch later and drew another trial 11 (measured before the fix)."""
    env = {"RUNNER_CACHE": str(tmp_path / "cache")}
    for workers in ("1", "2"):
        (tmp_path / workers).mkdir()
        done = run_cli("sweep", str(LR), "--workers", workers, "--set", "data.download=false",
                       cwd=tmp_path / workers, env=env)
        assert done.returncode == 0, done.stderr
    one, two = answer(tmp_path / "1", "lr"), answer(tmp_path / "2", "lr")
    assert one == two
    trials = journal_study(tmp_path / "2", "lr").trials
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers trained
    assert all(t.user_attrs.get("ordered", True) for t in trials)
    assert [t.state.name for t in trials].count("PRUNED") >= 3  # the pruner did decide
    # Every trained run says what became of its model: kept, or why not.
    client = mlflow_client(tmp_path / "2")
    tags = [r.data.tags for r in client.search_runs(
        [client.get_experiment_by_name("lr").experiment_id]) if "trial" in r.data.tags]
    assert len(tags) == 12 and all("model" in t for t in tags)
    assert {t["model"] for t in tags if t.get("state") == "PRUNED"} == {"not logged: pruned"}
    assert {t["model"] for t in tags if t.get("outcome") == "diverged"} == \
        {"not logged: diverged"}


def test_auto_starts_no_more_workers_than_trials_left(tmp_path):
    done = run_cli("sweep", str(TINY), "--n-trials", "1", cwd=tmp_path,
                   env={"RUNNER_WORKERS": None})
    assert done.returncode == 0, done.stderr
    trials = journal_study(tmp_path, "tiny").trials
    assert [t.state.name for t in trials] == ["COMPLETE"]


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


def _models(folder: Path) -> dict[str, tuple[bool, str]]:
    """Run name -> (has a model, its `model` tag), for every trial run."""
    client = mlflow_client(folder)
    out = {}
    for run in client.search_runs([client.get_experiment_by_name("m").experiment_id]):
        if "trial" in run.data.tags:
            names = [a.path for a in client.list_artifacts(run.info.run_id)]
            out[run.info.run_name] = ("model" in names, run.data.tags.get("model", ""))
    return out


SWEEP = """name: m
method: random
metric: {name: test_accuracy, goal: maximize}
n_trials: 5
seed: 3
pruner: {type: none}
fixed: {epochs: 1, batch_size: 128, data.download: false}
parameters:
  learning_rate: {distribution: log_uniform_values, min: 1.0e-3, max: 0.3}
"""


def test_top_k_keeps_the_models_of_the_best_so_far(tmp_path):
    path = write_sweep(tmp_path, SWEEP + "models: top_k 2\n")
    done = run_cli("sweep", str(path), "--workers", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    models = _models(tmp_path)
    trials = [t for t in journal_study(tmp_path, "m").trials if t.state.name == "COMPLETE"]
    kept = 0
    for t in trials:
        earlier = [u.value for u in trials if u.number < t.number]
        rank = sum(v > t.value for v in earlier)
        has, why = models[f"trial-{t.number}-has_aux"]
        assert has == (rank < 2), (t.number, why)
        assert why.startswith("logged" if has else "not logged") and "top_k 2" in why
        kept += has
    assert 0 < kept < len(trials)  # the seed makes both cases happen
    best = max(trials, key=lambda t: t.value)
    assert models[f"trial-{best.number}-has_aux"][0]  # the best trial always has its model


def test_models_none_keeps_none_and_all_keeps_ablations_too(tmp_path):
    (tmp_path / "none").mkdir()
    (tmp_path / "all").mkdir()
    path = write_sweep(tmp_path / "none", SWEEP.replace("n_trials: 5", "n_trials: 2")
                       + "models: none\n")
    assert run_cli("sweep", str(path), cwd=tmp_path / "none").returncode == 0
    assert not any(has for has, _ in _models(tmp_path / "none").values())
    path = write_sweep(tmp_path / "all", SWEEP.replace("n_trials: 5", "n_trials: 2")
                       + "models: all\nablation: {grad_mode: [has_aux, stop_gradient]}\n")
    assert run_cli("sweep", str(path), cwd=tmp_path / "all").returncode == 0
    models = _models(tmp_path / "all")
    assert len(models) == 4 and all(has for has, _ in models.values())


def test_with_repeats_or_a_trade_off_every_objective_run_keeps_its_model(tmp_path):
    """Their trial's rank is known only at its end, when the weights are gone."""
    text = SWEEP.replace("n_trials: 5", "n_trials: 2").replace(
        "metric: {name: test_accuracy, goal: maximize}",
        "metric: [{name: test_accuracy, goal: maximize}, {name: train_time_s, goal: minimize}]")
    path = write_sweep(tmp_path, text + "models: best\n")
    done = run_cli("sweep", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    models = _models(tmp_path)
    assert len(models) == 2 and all(has for has, _ in models.values())
    assert all("a trade-off ranks no trial first" in why for _, why in models.values())


@pytest.mark.parametrize("value", ["top_k 0", "top_k", "some", "{top_k: -1}", "3",
                                   "top_k 1001", "[best]"])
def test_a_bad_models_value_is_refused(tmp_path, value):
    path = write_sweep(tmp_path, SWEEP + f"models: {value}\n")
    done = run_cli("sweep", str(path), cwd=tmp_path)
    assert done.returncode == 2
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and str(path) in line and "models" in line
    assert "best, all, none or top_k N (N from 1 to 1000)" in line
    assert not (tmp_path / "mlruns").exists()


def test_predict_best_says_when_the_best_run_kept_no_model(tmp_path, mnist):
    from PIL import Image

    path = write_sweep(tmp_path, SWEEP.replace("n_trials: 5", "n_trials: 1") + "models: none\n")
    assert run_cli("sweep", str(path), cwd=tmp_path).returncode == 0
    png = tmp_path / "x.png"
    Image.fromarray(mnist.test_images[0]).save(png)
    done = run_cli("predict", "--model", f"best:{path}", str(png), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "the best trial's run" in line
    assert "has no logged model (not logged (models: none))" in line


@pytest.mark.slow
def test_workers_stop_when_their_parent_is_killed(tmp_path):
    """kill -9 of the sweep's process: its forked workers get SIGTERM (PR_SET_PDEATHSIG),
    close their runs and exit, instead of training on unseen; the rerun resumes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = write_sweep(tmp_path, SWEEP.replace("n_trials: 5", "n_trials: 40")
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


def test_a_template_mlflow_did_not_make_is_replaced(tmp_path, monkeypatch):
    from experiments.tracking import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RUNNER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    from importlib import metadata
    planted = tmp_path / "cache" / f"mlflow-{metadata.version('mlflow')}-store.db"
    with sqlite3.connect(planted) as con:
        con.execute("create table experiments (experiment_id int, x text)")
    monkeypatch.chdir(tmp_path)
    client = store.client()
    assert [e.name for e in client.search_experiments()] == ["Default"]
    with sqlite3.connect(planted) as con:  # replaced by the store MLflow created
        assert len(con.execute("select version_num from alembic_version").fetchall()) == 1


@pytest.mark.parametrize("value", ["maybe", "1", "'true'", "[true]"])
def test_a_bad_ordered_value_is_refused(tmp_path, value):
    path = write_sweep(tmp_path, SWEEP + f"ordered: {value}\n")
    done = run_cli("sweep", str(path), "--dry-run", cwd=tmp_path)
    assert done.returncode == 2
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "ordered" in line and "expected true or false" in line


def test_unordered_workers_run_the_budget(tmp_path):
    """`ordered: false`: the workers decide on what is done, as Optuna does; the budget,
    the runs and the dry run's word for it are as for any sweep."""
    path = write_sweep(tmp_path, SWEEP.replace("pruner: {type: none}",
                                               "pruner: {type: median, warmup_epochs: 0}")
                       .replace("method: random", "method: tpe") + "ordered: false\n")
    dry = run_cli("sweep", str(path), "--dry-run", cwd=tmp_path)
    assert "(ordered: false): faster, but the answer depends on timing" in dry.stdout
    done = run_cli("sweep", str(path), "--workers", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trials = journal_study(tmp_path, "m").trials
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 5
    assert len({t.user_attrs["worker"] for t in trials}) == 2


def test_a_template_mlflow_cannot_open_is_replaced(tmp_path, monkeypatch):
    """A template that looks like MLflow's but that MLflow refuses (here: a migration
    version it does not know): the store is created by MLflow after all, in the same
    process, and becomes the template."""
    from experiments.tracking import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RUNNER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    store.client()
    template = next((tmp_path / "cache").glob("mlflow-*-store.db"))
    with sqlite3.connect(template) as con:
        good = con.execute("select version_num from alembic_version").fetchall()
        con.execute("update alembic_version set version_num = 'ffffffffffff'")
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    client = store.client()
    assert [e.name for e in client.search_experiments()] == ["Default"]
    client.create_experiment("after")
    with sqlite3.connect(template) as con:
        assert con.execute("select version_num from alembic_version").fetchall() == good


def _schema(db: Path) -> list:
    with sqlite3.connect(db) as con:
        return sorted(con.execute("select type, name, sql from sqlite_master"))


def test_a_store_from_the_template_is_mlflows_own(tmp_path, monkeypatch):
    from experiments.tracking import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RUNNER_CACHE", str(tmp_path / "cache"))
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        store.client()
    first, second = (tmp_path / n / "mlruns" / "mlflow.db" for n in ("first", "second"))
    template = next((tmp_path / "cache").glob("mlflow-*-store.db"))
    assert _schema(first) == _schema(second) == _schema(template)
    with sqlite3.connect(second) as con:
        assert con.execute("select version_num from alembic_version").fetchall() == \
            sqlite3.connect(first).execute("select version_num from alembic_version").fetchall()
        where = con.execute("select artifact_location from experiments").fetchall()
    assert where == [(str(tmp_path / "second" / "mlruns" / "0"),)]  # as MLflow writes it
    assert first.stat().st_mode == second.stat().st_mode
    client = mlflow_client(tmp_path / "second")
    run = client.create_run(client.create_experiment("e"))
    client.log_metric(run.info.run_id, "x", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"x": 1.0}


def test_no_template_when_the_cache_is_off(tmp_path, monkeypatch):
    from experiments.tracking import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RUNNER_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    store.client()
    assert (tmp_path / "mlruns" / "mlflow.db").exists()
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


def test_the_ordered_pruner_decides_at_once_only_when_nothing_running_can_change_it(
        monkeypatch):
    from experiments.search.study import liveness, ordered

    monkeypatch.setattr(ordered, "MAX_WAIT_S", 0.3)
    marked = []
    judge = ordered.Judge(alive=liveness.still_running, sweep=liveness.fail_stale,
                          unordered=lambda study, t: marked.append(t.number))
    pruner = ordered.OrderedPruner(optuna.pruners.MedianPruner(n_startup_trials=1), judge)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    done = study.ask()
    done.report(0.9, 1)
    study.tell(done, 0.9)
    earlier, late = study.ask(), study.ask()  # trial 1 runs on; trial 2 asks
    earlier.report(0.1, 1)
    # Trial 2's 0.4 is below the median whether trial 1 ends complete (0.1, 0.9) or not
    # (0.9 alone): pruned, at once.
    late.report(0.4, 1)
    assert late.should_prune() and not marked
    # At 0.6 the answer hangs on trial 1: below 0.9 alone, above the median of 0.1 and
    # 0.9 (0.5). It waits, and past MAX_WAIT_S decides on what is done, marked unordered.
    late2 = study.ask()
    late2.report(0.6, 1)
    assert late2.should_prune() and marked == [late2.number]
    study.tell(earlier, 0.1)
    # Trial 1 done: nothing is running below trial 4, which decides at once.
    fourth = study.ask()
    fourth.report(0.6, 1)
    assert not fourth.should_prune() and marked == [late2.number]


def test_a_process_builds_one_trainer_per_grad_mode():
    """Every trial of a process reuses its compiled trainer: a new one per trial compiled
    every shape again (4-5 s a trial instead of 0.4 s, measured when the cache was lost)."""
    from experiments.core.train import forkable, trainer_for

    assert trainer_for("has_aux") is trainer_for("has_aux")
    assert not forkable()  # a process that built one must not fork workers


def test_epoch_metrics_are_held_back_only_while_epochs_come_fast(store, monkeypatch):
    from experiments.tracking import mlflow_run
    from experiments.tracking.store import client

    c = client()
    run = mlflow_run.MlflowRun.start(c, "e", "r", {"x": 1})
    run.log_epoch(1, {"loss": 2.0})  # within FLUSH_S of the start: held back
    assert c.get_metric_history(run.run_id, "loss") == []
    monkeypatch.setattr(mlflow_run, "FLUSH_S", 0.0)  # an epoch slower than FLUSH_S
    run.log_epoch(2, {"loss": 1.0})
    assert [m.step for m in c.get_metric_history(run.run_id, "loss")] == [1, 2]
    monkeypatch.setattr(mlflow_run, "FLUSH_S", 60.0)
    run.log_epoch(3, {"loss": 0.5})
    run.end("FINISHED", {"done": "yes"})
    finished = c.get_run(run.run_id)
    assert [m.step for m in c.get_metric_history(run.run_id, "loss")] == [1, 2, 3]
    assert finished.info.status == "FINISHED" and finished.data.tags["done"] == "yes"
