"""Sweeps end to end on real Optuna storage, a real MLflow store and the offline digits:
the runs, the pruning, the ablation, and how a sweep ends."""

import re

import pytest
from optuna.trial import TrialState

import runner
from helpers import FAST, TINY, TINY_SPACE, journal_study, sweep_file, sweep_runs, write_sweep


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_paired_ablation_shares_start_and_differs_in_gradient(store, capsys):
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
    # The ablation's answer, where a user looks: the summary, `status`, `compare` (first).
    summary = capsys.readouterr().out
    assert runner.main(["status", str(path)]) == 0
    status = capsys.readouterr().out
    assert runner.main(["compare", str(path)]) == 0
    compared = capsys.readouterr().out
    for out in (summary, status, compared):
        assert "ablation (same seed, weights and batches per trial; has_aux is the " \
            "objective):" in out, out
        assert re.search(r"  no_aux: 1 trial, diverged in 1 of 1 \(at epoch 1, step \d+\)\n",
                         out), out
        assert re.search(r"  stop_gradient: 1 trial, mean test_accuracy 0\.\d{4}; identical "
                         r"to has_aux to the bit in 1 of 1 paired trials\n", out), out
    assert compared.index("ablation (") < compared.index("final_test_accuracy")
    assert "diverged" in compared.split("final_test_accuracy")[1].splitlines()[0]
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


@pytest.mark.slow
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


def test_n_trials_on_the_command_line_lowers_the_budget(store, capsys):
    path = sweep_file(store, TINY_SPACE.replace("n_trials: 1", "n_trials: 4"))
    assert runner.main(["sweep", path, "--n-trials", "2"]) == 0
    assert "2/2 trials counted" in capsys.readouterr().out
    assert len(journal_study(store, "question").get_trials()) == 2
    # Lowered below what has counted: said as such, not '2 of 1' (review).
    lowered = "2 trials counted, more than the 1 asked for now (all kept)"
    assert runner.main(["sweep", path, "--n-trials", "1"]) == 0
    out, err = capsys.readouterr()
    assert f"(budget met): {lowered} (2 COMPLETE)" in out
    assert f"resuming sweep 'question': {lowered}; the budget is met: nothing to train" in err
    assert runner.main(["status", path, "--n-trials", "1"]) == 0
    assert f"): {lowered}, 0 left" in capsys.readouterr().out
    assert len(journal_study(store, "question").get_trials()) == 2


@pytest.mark.slow
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


@pytest.mark.slow
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

