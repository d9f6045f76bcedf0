"""The sweep trains what it records: each test here reproduces a defect found by review.

Sweeps run in process (`runner.main`) on a real journal storage, a real SQLite MLflow
store and the offline digits, shrunk to one short epoch per trial.
"""

import socket
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_sweep import journal_study, sweep_runs

import runner
from conftest import mlflow_client
from experiments.search import compare

FAST = "fixed: {epochs: 1, batch_size: 1000, data.download: false}"


def sweep_file(folder, text: str, name: str = "s.yaml"):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def trained(client, run) -> dict:
    """What a run trained with, as MLflow recorded it: params and the grad mode tag."""
    return {**run.data.params, "tag.grad_mode": run.data.tags.get("grad_mode")}


def test_grid_visits_every_point_once_across_resumes(store):
    path = sweep_file(store, f"""
        name: grid
        method: grid
        n_trials: 3
        pruner: {{type: none}}
        {FAST}
        parameters:
          seed: {{values: [0, 1, 2, 3, 4, 5]}}
        """)
    assert runner.main(["sweep", path]) == 0
    first = {t.params["seed"] for t in journal_study(store, "grid").get_trials()
             if t.state == TrialState.COMPLETE}
    assert len(first) == 3
    assert runner.main(["sweep", path, "--n-trials", "6"]) == 0
    trials = journal_study(store, "grid").get_trials()
    seeds = sorted(t.params["seed"] for t in trials if t.state == TrialState.COMPLETE)
    assert seeds == [0, 1, 2, 3, 4, 5]
    _, _, children = sweep_runs(store, "grid")
    assert sorted(int(r.data.params["seed"]) for r in children) == seeds


def test_swept_grad_mode_is_the_mode_that_trains(store):
    path = sweep_file(store, f"""
        name: modes
        method: grid
        n_trials: 2
        pruner: {{type: none}}
        {FAST}
        parameters:
          grad_mode: {{values: [stop_gradient, no_aux]}}
          learning_rate: {{value: 0.001}}
        """)
    assert runner.main(["sweep", path]) == 0
    client, parents, children = sweep_runs(store, "modes")
    assert sorted(r.data.tags["grad_mode"] for r in children) == ["no_aux", "stop_gradient"]
    for run in children:
        assert run.data.params["grad_mode"] == run.data.tags["grad_mode"]
    for t in journal_study(store, "modes").get_trials():
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["grad_mode"] == t.params["grad_mode"]
    assert parents[0].data.params["grad_modes"] == "stop_gradient,no_aux"


@pytest.mark.parametrize("key, values", [("data.path", "[a, b]"),
                                         ("data.download", "[true, false]")])
def test_data_source_cannot_be_swept(store, capsys, key, values):
    path = sweep_file(store, f"""
        name: data
        {FAST.replace(', data.download: false', '')}
        parameters:
          {key}: {{values: {values}}}
        """)
    assert runner.main(["sweep", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"parameters.{key}" in err[0] and "fixed" in err[0]
    assert sorted(p.name for p in store.iterdir()) == ["s.yaml"]


def dry_run_configs(capsys) -> list[dict]:
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if "configs a new study trains" in line)
    configs = []
    for line in out[start + 1:]:
        items = line.split(". ", 1)[1].split(", ")
        configs.append(dict(item.split("=", 1) for item in items))
    return configs


@pytest.mark.parametrize("method", ["tpe", "grid", *(pytest.param(m, marks=pytest.mark.slow)
                                                     for m in ("random", "qmc", "cmaes"))])
def test_dry_run_shows_the_configs_the_run_trains(store, capsys, method):
    space = ("learning_rate: {values: [0.01, 0.03, 0.1]}\n  batch_size: {values: [500, 1000]}"
             if method == "grid" else
             "learning_rate: {distribution: log_uniform_values, min: 0.001, max: 0.5}\n"
             "  batch_size: {distribution: int_uniform, min: 500, max: 1000}")
    path = store / "s.yaml"
    path.write_text(f"name: dry\nmethod: {method}\nn_trials: 3\nseed: 11\npruner: {{type: none}}"
                    f"\nfixed: {{epochs: 1, data.download: false}}\nparameters:\n  {space}\n")
    assert runner.main(["sweep", str(path), "--dry-run"]) == 0
    shown = dry_run_configs(capsys)
    assert len(shown) == 3
    assert runner.main(["sweep", str(path)]) == 0
    trials = sorted(journal_study(store, "dry").get_trials(), key=lambda t: t.number)
    ran = [{"learning_rate": repr(t.params["learning_rate"]),
            "batch_size": str(t.params["batch_size"])} for t in trials]
    assert ran == [{k: c[k] for k in ("learning_rate", "batch_size")} for c in shown]


TINY_SPACE = f"""
    name: question
    method: random
    n_trials: 1
    pruner: {{type: none}}
    {FAST}
    parameters:
      learning_rate: {{distribution: log_uniform_values, min: 0.01, max: 0.5}}
    """


def test_a_sweep_is_one_question(store, capsys):
    path = sweep_file(store, TINY_SPACE)
    assert runner.main(["sweep", path]) == 0
    # The budget alone may change.
    assert runner.main(["sweep", path, "--n-trials", "2"]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in (store / "mlruns").rglob("*"))

    changed = sweep_file(store, TINY_SPACE.replace("max: 0.5", "max: 0.9"), "changed.yaml")
    assert runner.main(["sweep", changed, "--n-trials", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parameters.learning_rate" in err[0] and "0.9" in err[0]
    assert "new `name`" in err[0] and "--allow-change" in err[0]
    goal = sweep_file(store, TINY_SPACE.replace("pruner:", "metric: {name: test_loss}\n"
                                                "    pruner:"), "goal.yaml")
    for extra in ([], ["--allow-change"]):
        assert runner.main(["sweep", goal, *extra]) == 2
        err = capsys.readouterr().err
        assert "metric" in err and "minimize test_loss" in err and "--allow-change" not in err
    assert sorted(p.name for p in (store / "mlruns").rglob("*")) == before, "refused, yet wrote"
    study = journal_study(store, "question")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE

    assert runner.main(["sweep", changed, "--n-trials", "3", "--allow-change"]) == 0
    client, parents, children = sweep_runs(store, "question")
    assert len(parents) == 1 and len(children) == 3
    tags = parents[0].data.tags
    assert "parameters.learning_rate" in tags["sweep.change.1"]
    assert tags["sweep.fingerprint"] == journal_study(store, "question").user_attrs[
        "sweep.fingerprint"]
    text = client.download_artifacts(parents[0].info.run_id, "changes/1/sweep.yaml", str(store))
    assert "max: 0.9" in Path(text).read_text()
    # Now the changed file is the study's question: it runs without the flag.
    assert runner.main(["sweep", changed, "--n-trials", "3"]) == 0


def test_timeout_is_a_normal_end(store, capsys):
    path = sweep_file(store, TINY_SPACE.replace("n_trials: 1", "n_trials: 500\n    "
                                                "timeout_s: 0.5"))
    assert runner.main(["sweep", path]) == 0
    out = capsys.readouterr().out
    assert "stopped by timeout_s" in out
    trials = journal_study(store, "question").get_trials()
    assert 1 <= len(trials) < 500
    _, parents, _ = sweep_runs(store, "question")
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["end_reason"] == "timeout"


def test_constants_are_params_of_the_best_trial(store):
    path = sweep_file(store, """
        name: const
        method: tpe
        n_trials: 2
        pruner: {type: none}
        fixed: {epochs: 1, data.download: false}
        parameters:
          batch_size: {value: 1000}
          learning_rate: {distribution: log_uniform_values, min: 0.01, max: 0.5}
        """)
    assert runner.main(["sweep", path]) == 0
    _, parents, children = sweep_runs(store, "const")
    tags = parents[0].data.tags
    assert tags["best.batch_size"] == "1000" and "best.learning_rate" in tags
    assert float(tags["best_value"]) == max(r.data.metrics["test_accuracy"] for r in children)
    assert {r.data.params["batch_size"] for r in children} == {"1000"}


def test_train_runs_have_their_grad_mode_in_history(store):
    assert runner.main(["train", "--set", "epochs=1", "--set", "data.download=false",
                        "--set", "grad_mode=stop_gradient", "--set", "batch_size=1000",
                        "--experiment", "solo"]) == 0
    client = mlflow_client(store)
    hist = compare.history("solo", client)
    assert len(hist) and set(hist["grad_mode"]) == {"stop_gradient"}
    assert set(compare.runs("solo", client)["grad_mode"]) == {"stop_gradient"}


def test_grid_budget_is_capped_at_the_grid(store, capsys):
    path = sweep_file(store, f"""
        name: cap
        method: grid
        n_trials: 10
        pruner: {{type: none}}
        {FAST}
        parameters:
          learning_rate: {{values: [0.01, 0.1, 0.3]}}
        """)
    assert runner.main(["sweep", path]) == 0
    assert "3/3 trials counted" in capsys.readouterr().out
    trials = journal_study(store, "cap").get_trials()
    assert sorted(t.params["learning_rate"] for t in trials) == [0.01, 0.1, 0.3]


def test_n_trials_on_the_command_line_lowers_the_budget(store, capsys):
    path = sweep_file(store, TINY_SPACE.replace("n_trials: 1", "n_trials: 4"))
    assert runner.main(["sweep", path, "--n-trials", "2"]) == 0
    assert "2/2 trials counted" in capsys.readouterr().out
    assert len(journal_study(store, "question").get_trials()) == 2


def test_a_diverging_objective_fails_and_the_sweep_goes_on(store, capsys):
    path = sweep_file(store, f"""
        name: nan
        method: grid
        n_trials: 2
        pruner: {{type: none}}
        {FAST.replace('batch_size: 1000', 'batch_size: 64')}
        parameters:
          grad_mode: {{values: [no_aux, has_aux]}}
        """)
    assert runner.main(["sweep", path]) == 0
    assert "2/2 trials counted" in capsys.readouterr().out
    trials = {t.params["grad_mode"]: t for t in journal_study(store, "nan").get_trials()}
    assert trials["no_aux"].state == TrialState.FAIL
    assert trials["no_aux"].user_attrs["fail_reason"].startswith("objective no_aux diverged")
    assert trials["has_aux"].state == TrialState.COMPLETE
    client, parents, _ = sweep_runs(store, "nan")
    failed = client.get_run(trials["no_aux"].user_attrs["mlflow_run_id"])
    assert failed.info.status == "FAILED" and failed.data.tags["state"] == "FAIL"
    assert parents[0].data.tags["best_trial"] == str(trials["has_aux"].number)


def test_hyperband_prunes_and_counts(store):
    path = sweep_file(store, """
        name: hyper
        method: random
        n_trials: 8
        seed: 1
        pruner: {type: hyperband, warmup_epochs: 1}
        fixed: {epochs: 4, batch_size: 500, data.download: false}
        parameters:
          learning_rate: {distribution: log_uniform_values, min: 1.0e-5, max: 0.5}
        """)
    assert runner.main(["sweep", path]) == 0
    trials = journal_study(store, "hyper").get_trials()
    assert len(trials) == 8
    assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert len(t.intermediate_values) < 4


def test_gp_runs_with_pytorch_and_is_refused_without(store, capsys):
    import importlib.util

    path = sweep_file(store, TINY_SPACE.replace("method: random", "method: gp")
                      .replace("n_trials: 1", "n_trials: 2"))
    if importlib.util.find_spec("torch") is None:
        assert runner.main(["sweep", path]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "method: gp needs PyTorch" in err[0]
        assert sorted(p.name for p in store.iterdir()) == ["s.yaml"]
    else:
        assert runner.main(["sweep", path]) == 0
        trials = journal_study(store, "question").get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


def test_a_resume_closes_runs_left_running_by_a_gone_process(store, capsys):
    """A signal that cut a worker's closing short left its run RUNNING, its trial FAIL."""
    from experiments.tracking.mlflow_run import MlflowRun

    path = sweep_file(store, TINY_SPACE)
    assert runner.main(["sweep", path]) == 0
    client = mlflow_client(store)
    gone = f"{socket.gethostname()}:999999999"  # no such process on this host
    left = MlflowRun.start(client, "question", "trial-0-has_aux", {},
                           {"sweep": "question", "trial": "0", "worker": gone})
    alive = MlflowRun.start(client, "question", "elsewhere", {},  # another machine's, live
                            {"sweep": "question", "trial": "0", "worker": "otherhost:1"})
    assert runner.main(["sweep", path]) == 0
    assert "1 MLflow run(s) of finished trials left RUNNING" in capsys.readouterr().err
    closed = client.get_run(left.run_id)
    assert closed.info.status == "KILLED" and "gone" in closed.data.tags["failure_reason"]
    assert client.get_run(alive.run_id).info.status == "RUNNING"


def test_allow_change_refuses_what_optuna_cannot_continue(store, capsys):
    """A values list changed in place made every later trial fail (Optuna refuses a new
    value space for a parameter name) and spent the budget on failures."""
    path = sweep_file(store, TINY_SPACE.replace(
        "learning_rate: {distribution: log_uniform_values, min: 0.01, max: 0.5}",
        "learning_rate: {values: [0.1, 0.2]}"))
    assert runner.main(["sweep", path]) == 0
    before = sorted(p.name for p in (store / "mlruns").rglob("*"))
    capsys.readouterr()
    for new in ("{values: [0.1, 0.4]}", "{distribution: uniform, min: 0.01, max: 0.5}"):
        changed = sweep_file(store, Path(path).read_text().replace("{values: [0.1, 0.2]}", new),
                             "changed.yaml")
        assert runner.main(["sweep", changed, "--allow-change", "--n-trials", "3"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "parameters.learning_rate" in err[0] and "new `name`" in err[0]
    assert sorted(p.name for p in (store / "mlruns").rglob("*")) == before


def test_a_changed_grid_visits_its_new_points(store, capsys):
    path = sweep_file(store, f"""
        name: regrid
        method: grid
        n_trials: 10
        pruner: {{type: none}}
        {FAST}
        parameters:
          learning_rate: {{values: [0.1, 0.2]}}
          grad_mode: {{values: [has_aux, stop_gradient]}}
        """)
    assert runner.main(["sweep", path]) == 0
    text = Path(path).read_text().replace("  grad_mode: {values: [has_aux, stop_gradient]}\n",
                                          "").replace("batch_size: 1000", "batch_size: 1000, "
                                                      "grad_mode: has_aux")
    changed = sweep_file(store, text, "changed.yaml")
    assert runner.main(["sweep", changed, "--allow-change"]) == 0
    assert "2/2 trials counted" in capsys.readouterr().out
    trials = journal_study(store, "regrid").get_trials()
    new = [t for t in trials if t.state == TrialState.COMPLETE and "grad_mode" not in t.params]
    assert sorted(t.params["learning_rate"] for t in new) == [0.1, 0.2]


def test_the_parent_run_keeps_the_current_budget(store):
    path = sweep_file(store, TINY_SPACE)
    assert runner.main(["sweep", path]) == 0
    assert runner.main(["sweep", path, "--n-trials", "2"]) == 0
    _, parents, _ = sweep_runs(store, "question")
    tags = parents[0].data.tags
    assert tags["sweep.n_trials"] == "2" and tags["sweep.pruner"].startswith("none")
    assert "n_trials" not in parents[0].data.params


def test_writing_out_a_default_asks_the_same_question(store):
    path = sweep_file(store, TINY_SPACE)
    assert runner.main(["sweep", path]) == 0
    assert runner.main(["sweep", path, "--set", "seed=0", "--set", "data.path=MNIST_Data",
                        "--set", "data.eval_batch_size=500", "--n-trials", "2"]) == 0


def test_the_dry_run_checks_what_the_run_checks(store, capsys):
    path = sweep_file(store, TINY_SPACE)
    assert runner.main(["sweep", path, "--dry-run", "--set", "data.download=true",
                        "--set", "data.path=/proc/x/MNIST_Data"]) == 2
    assert "data.path" in capsys.readouterr().err
    assert runner.main(["sweep", path, "--n-trials", "2"]) == 0
    changed = sweep_file(store, TINY_SPACE.replace("max: 0.5", "max: 0.9"), "changed.yaml")
    assert runner.main(["sweep", changed, "--dry-run"]) == 2
    assert "parameters.learning_rate" in capsys.readouterr().err
    # An existing study: the dry run shows the configs a rerun trains next.
    capsys.readouterr()
    assert runner.main(["sweep", path, "--n-trials", "4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "exists with 2 trials" in out
    shown = dry_run_configs_from(out)
    assert runner.main(["sweep", path, "--n-trials", "4"]) == 0
    trials = {t.number: t for t in journal_study(store, "question").get_trials()}
    assert [repr(trials[n].params["learning_rate"]) for n in (2, 3)] == [
        c["learning_rate"] for c in shown]


def dry_run_configs_from(out: str) -> list[dict]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "configs" in line and "trains" in line)
    return [dict(item.split("=", 1) for item in line.split(". ", 1)[1].split(", "))
            for line in lines[start + 1:]]
