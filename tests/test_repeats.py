"""`repeats: k`: each configuration trains with k seeds, the objective is their mean, the
pruner decides on the first seed, and a kill loses no finished seed."""

import math
import os
import signal
import statistics
import subprocess
import sys

import pytest
from optuna.trial import TrialState

import runner
from helpers import (
    REPEATS,
    ROOT,
    journal_study,
    mlflow_client,
    sweep_runs,
    write_sweep,
)


@pytest.mark.slow
def test_repeats_train_k_seeds_and_the_objective_is_their_mean(store, capsys):
    assert runner.main(["sweep", str(write_sweep(store, REPEATS))]) == 0
    out = capsys.readouterr().out
    assert "(3 seeds)" in out and "noise" not in out  # the terminal shows mean ± std
    study = journal_study(store, "seeds")
    client, _, children = sweep_runs(store, "seeds")
    assert len(children) == 6
    for t in study.get_trials():
        assert t.state == TrialState.COMPLETE
        runs = objective_runs(children, t.number)
        seeds = [int(r.data.params["seed"]) for r in runs]
        assert len(runs) == 3 and len(set(seeds)) == 3 and seeds[0] == 0  # the config's own
        assert seeds == t.user_attrs["seeds"]
        assert [r.data.tags["repeat"] for r in runs] == ["0", "1", "2"]
        finals = [r.data.metrics["test_accuracy"] for r in runs]
        assert t.value == math.fsum(finals) / 3
        assert t.user_attrs["test_accuracy.std"] == pytest.approx(statistics.stdev(finals))
        for r in runs:  # every run carries its configuration's mean and noise
            assert r.data.metrics["test_accuracy_mean"] == t.value
            assert r.data.metrics["test_accuracy_std"] == pytest.approx(statistics.stdev(finals))
        assert t.user_attrs["mlflow_run_id"] == runs[0].info.run_id

    from scipy import stats

    from experiments.search import compare, report
    frame = compare.runs(str(store / "sweep.yaml"), client)
    assert {"mean_test_accuracy", "std_test_accuracy", "seeds"} <= set(frame.columns)
    assert (frame["seeds"] == 3).all()
    text = report.report(str(store / "sweep.yaml"), client, 10)
    assert "per configuration, mean ± std over seeds" in text
    ranked = sorted(study.get_trials(), key=lambda t: t.value, reverse=True)
    best, second = ([r.data.metrics["test_accuracy"] for r in objective_runs(children, t.number)]
                    for t in ranked)
    p = stats.ttest_ind(best, second, equal_var=False, alternative="greater").pvalue
    verdict = next(line for line in text.splitlines() if line.startswith("noise:"))
    assert f"trial {ranked[0].number} vs runner-up trial {ranked[1].number}" in verdict
    assert f"one-sided p {p:.3f}" in verdict
    assert ("beyond the noise" in verdict) == (p < 0.05)


def objective_runs(children, trial):
    return sorted((r for r in children if r.data.tags.get("trial") == str(trial)
                   and r.data.tags.get("role") == "objective"),
                  key=lambda r: int(r.data.tags.get("repeat", "0")))


@pytest.mark.slow
def test_one_repeat_is_the_plain_sweep_bit_for_bit(store):
    """repeats: 1 trains exactly what a sweep without the key trains."""
    plain = REPEATS.replace("repeats: 3\n", "").replace("name: seeds", "name: plain")
    one = REPEATS.replace("repeats: 3", "repeats: 1").replace("name: seeds", "name: one")
    for name, text in (("plain", plain), ("one", one)):
        path = store / f"{name}.yaml"
        path.write_text(text)
        assert runner.main(["sweep", str(path)]) == 0
    values = [[t.value for t in journal_study(store, n).get_trials()] for n in ("plain", "one")]
    assert values[0] == values[1] and len(values[0]) == 2


@pytest.mark.slow
def test_repeats_with_the_ablation_pair_by_seed(store, capsys):
    text = REPEATS.replace("n_trials: 2", "n_trials: 1").replace(
        "repeats: 3", "repeats: 2\nablation: {grad_mode: [has_aux, stop_gradient]}")
    path = str(write_sweep(store, text))
    assert runner.main(["sweep", path]) == 0
    # The verdict pairs the first seed's trainings, the same in the summary and compare
    # (the summary used the mean over the seeds, compare the first seed).
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  has_aux")]
    assert runner.main(["compare", path]) == 0
    compared = [line for line in capsys.readouterr().out.splitlines()
                if line.startswith("  has_aux")]
    assert said == compared and len(said) == 1, (said, compared)
    _, _, children = sweep_runs(store, "seeds")
    assert len(children) == 4
    by_seed = {}
    for r in children:
        by_seed.setdefault(r.data.params["seed"], {})[r.data.tags["grad_mode"]] = r
    assert len(by_seed) == 2
    for pair in by_seed.values():  # the same seed: the same start for both modes
        assert set(pair) == {"has_aux", "stop_gradient"}
        assert len({r.data.tags["init_weights_digest"] for r in pair.values()}) == 1
    t = journal_study(store, "seeds").get_trials()[0]
    assert "test_accuracy.stop_gradient.std" in t.user_attrs


@pytest.mark.slow
def test_pruning_decides_on_the_first_seed(store):
    text = """
name: prune_seeds
method: random
n_trials: 8
seed: 1
repeats: 2
pruner: {type: median, warmup_epochs: 0}
fixed: {epochs: 3, batch_size: 256, data.download: false}
parameters:
  learning_rate: {distribution: log_uniform_values, min: 1.0e-5, max: 0.5}
"""
    assert runner.main(["sweep", str(write_sweep(store, text))]) == 0
    trials = journal_study(store, "prune_seeds").get_trials()
    _, _, children = sweep_runs(store, "prune_seeds")
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned
    for t in trials:
        runs = objective_runs(children, t.number)
        # A pruned configuration trains no further seed; a complete one trains both.
        assert len(runs) == (1 if t.state == TrialState.PRUNED else 2), t.state
        if t.state == TrialState.PRUNED:  # the pruner saw the first seed's curve
            assert sorted(t.intermediate_values) == list(range(1, len(
                mlflow_client(store).get_metric_history(runs[0].info.run_id, "test_loss")) + 1))


@pytest.mark.slow
def test_kill_9_mid_trial_loses_no_finished_seed(tmp_path):
    """Killed as the third seed starts: the rerun takes the two finished seeds over, trains
    the third, and the trial's value is the one a sweep never killed gets."""
    text = REPEATS.replace("n_trials: 2", "n_trials: 1")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for folder in (killed, clean):
        folder.mkdir()
        write_sweep(folder, text)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    cmd = [sys.executable, str(ROOT / "runner.py"), "sweep", "sweep.yaml"]
    first = subprocess.run(cmd, cwd=killed, env=env | {"RUNNER_FAULT": "run_started:3"},
                           capture_output=True, timeout=600)
    assert first.returncode == -signal.SIGKILL
    again = subprocess.run(cmd, cwd=killed, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert subprocess.run(cmd, cwd=clean, env=env, capture_output=True,
                          timeout=600).returncode == 0
    trials = journal_study(killed, "seeds").get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].user_attrs["retry_of"] == 0
    _, _, children = sweep_runs(killed, "seeds")
    runs = objective_runs(children, done[0].number)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    taken = [r for r in runs if r.data.tags.get("taken_over_from_trial") == "0"]
    assert len(taken) == 2 and all("fail_kind" not in r.data.tags for r in taken)
    # Only the killed run and the third seed trained after the kill: 2 + 1 + 1 runs.
    assert len(children) == 4
    [reference] = journal_study(clean, "seeds").get_trials()
    assert done[0].value == reference.value and done[0].params == reference.params

