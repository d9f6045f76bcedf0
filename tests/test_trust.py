"""Answers you can trust: repeats over seeds, warm starts and trade-offs, end to end on a
real Optuna journal, a real MLflow store and the offline digits."""

import math
import os
import signal
import statistics
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState
from test_sweep import journal_study, sweep_runs, write_sweep

import runner
from conftest import ROOT, mlflow_client

REPEATS = """
name: seeds
method: random
n_trials: 2
seed: 3
repeats: 3
pruner: {type: none}
fixed: {epochs: 1, batch_size: 256, data.download: false}
parameters:
  learning_rate: {distribution: log_uniform_values, min: 0.05, max: 0.3}
"""


def objective_runs(children, trial):
    return sorted((r for r in children if r.data.tags.get("trial") == str(trial)
                   and r.data.tags.get("role") == "objective"),
                  key=lambda r: int(r.data.tags.get("repeat", "0")))


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

    from experiments.search import compare
    frame = compare.runs(str(store / "sweep.yaml"), client)
    assert {"mean_test_accuracy", "std_test_accuracy", "seeds"} <= set(frame.columns)
    assert (frame["seeds"] == 3).all()
    text = compare.report(str(store / "sweep.yaml"), client, 10)
    assert "per configuration, mean ± std over seeds" in text
    ranked = sorted(study.get_trials(), key=lambda t: t.value, reverse=True)
    best, second = ([r.data.metrics["test_accuracy"] for r in objective_runs(children, t.number)]
                    for t in ranked)
    p = stats.ttest_ind(best, second, equal_var=False, alternative="greater").pvalue
    verdict = next(line for line in text.splitlines() if line.startswith("noise:"))
    assert f"trial {ranked[0].number} vs runner-up trial {ranked[1].number}" in verdict
    assert f"one-sided p {p:.3f}" in verdict
    assert ("beyond the noise" in verdict) == (p < 0.05)


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


def test_repeats_with_the_ablation_pair_by_seed(store):
    text = REPEATS.replace("n_trials: 2", "n_trials: 1").replace(
        "repeats: 3", "repeats: 2\nablation: {grad_mode: [has_aux, stop_gradient]}")
    assert runner.main(["sweep", str(write_sweep(store, text))]) == 0
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


def test_warm_start_queues_the_earlier_best_that_fit(store, capsys):
    earlier = """
name: early
method: random
n_trials: 5
seed: 2
pruner: {type: none}
fixed: {epochs: 1, batch_size: 256, data.download: false}
parameters:
  learning_rate: {distribution: log_uniform_values, min: 0.01, max: 0.5}
"""
    (store / "early.yaml").write_text(earlier)
    assert runner.main(["sweep", "early.yaml"]) == 0
    past = sorted((t for t in journal_study(store, "early").get_trials()),
                  key=lambda t: t.value, reverse=True)
    top3 = past[:3]
    # This sweep's range leaves out the highest rate of the earlier three (cut just below).
    cut = max(top3, key=lambda t: t.params["learning_rate"])
    high = cut.params["learning_rate"] * 0.999
    low = min(t.params["learning_rate"] for t in past) * 0.5
    later = f"""
name: later
method: tpe
n_trials: 3
seed: 0
pruner: {{type: none}}
warm_start: {{from: early.yaml, top: 3}}
fixed: {{epochs: 1, batch_size: 256, data.download: false}}
parameters:
  learning_rate: {{distribution: log_uniform_values, min: {low}, max: {high}}}
"""
    (store / "later.yaml").write_text(later)
    capsys.readouterr()
    fits = [t for t in top3 if low <= t.params["learning_rate"] <= high]
    assert runner.main(["sweep", "later.yaml"]) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert f"warm start: trial {cut.number} of 'early' skipped: learning_rate=" in out
    assert len(fits) == 2
    trials = journal_study(store, "later").get_trials()
    warm = [t for t in trials if "warm_start_from" in t.user_attrs]
    assert [t.user_attrs["warm_start_from"] for t in warm] == [f"early#{t.number}" for t in fits]
    assert [t.params["learning_rate"] for t in warm] == [t.params["learning_rate"]
                                                         for t in fits]
    assert warm and warm[0].number == 0, (out, [(t.number, t.value, t.params) for t in past])
    _, _, children = sweep_runs(store, "later")
    tagged = {r.data.tags.get("warm_start_from") for r in children} - {None}
    assert tagged == {f"early#{t.number}" for t in fits}
    # Rerun with a bigger budget: nothing is queued twice.
    assert runner.main(["sweep", "later.yaml", "--n-trials", "5"]) == 0
    again = journal_study(store, "later").get_trials()
    origins = [t.user_attrs["warm_start_from"] for t in again if "warm_start_from" in t.user_attrs]
    assert sorted(origins) == sorted(set(origins)) and len(origins) == len(fits)


TRADEOFF = """
name: trade
method: random
n_trials: 5
seed: 0
metric:
  - {name: test_accuracy, goal: maximize}
  - {name: train_time_s, goal: minimize}
fixed: {batch_size: 256, data.download: false}
parameters:
  epochs: {values: [1, 2]}
  learning_rate: {distribution: log_uniform_values, min: 0.01, max: 0.3}
"""


def test_a_trade_off_tags_optunas_pareto_front(store, capsys):
    assert runner.main(["sweep", str(write_sweep(store, TRADEOFF))]) == 0
    out = capsys.readouterr().out
    assert "Pareto front (maximize test_accuracy, minimize train_time_s)" in out
    study = journal_study(store, "trade")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    front = {t.number for t in study.best_trials}
    client, parents, children = sweep_runs(store, "trade")
    assert len(children) == 5
    for r in children:
        t = int(r.data.tags["trial"])
        assert r.data.tags["pareto"] == ("true" if t in front else "false")
        values = study.trials[t].values
        # The objectives are the run's final metrics, train_time_s the seconds of steps.
        assert values == [r.data.metrics["test_accuracy"], r.data.metrics["train_time_s"]]
        # Seconds of training steps: a part of the epochs' time (which adds evaluation).
        epochs = client.get_metric_history(r.info.run_id, "epoch_time_s")
        assert 0 < r.data.metrics["train_time_s"] <= sum(m.value for m in epochs)
    parent = parents[0]
    assert parent.data.tags["pareto_trials"] == ",".join(str(n) for n in sorted(front))
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/pareto_front.png" in artifacts
    from experiments.search import compare
    frame = compare.runs(str(store / "sweep.yaml"), client)
    assert set(frame.loc[frame["pareto"], "trial"]) == front
    assert "pareto" in compare.report(str(store / "sweep.yaml"), client, 10)


def test_the_pareto_front_is_optunas(store):
    """objectives.pareto (used while the sweep runs) equals Optuna's best_trials, ties too."""
    from experiments.search.spec.metrics import pareto

    study = optuna.create_study(directions=["maximize", "minimize"])
    for values in ([0.9, 2.0], [0.9, 2.0], [0.8, 1.0], [0.7, 1.5], [0.95, 3.0], [0.95, 3.0],
                   [0.5, 0.5], [0.5, 0.6]):
        study.add_trial(optuna.trial.create_trial(values=values))
    mine = [t.number for t in pareto(study.trials, (("a", "maximize"), ("b", "minimize")))]
    assert mine == [t.number for t in study.best_trials]


@pytest.mark.parametrize("text,where", [
    ("repeats: 0\n", "repeats: expected an integer from 1 to 100, got 0"),
    ("repeats: '3'\n", "repeats: expected an integer"),
    ("repeats: 2\nparameters:\n  seed: {values: [1, 2]}\n", "repeats: picks each trial's seeds"),
    ("metric: [{name: test_accuracy, goal: maximize}, {name: test_accuracy, goal: minimize}]\n",
     "metric[1].name: test_accuracy is given twice"),
    ("metric: [{name: test_accuracy, goal: maximize}]\n", "metric: a list of metrics needs two"),
    ("metric: [{name: test_accuracy, goal: maximize, target: 0.9}, {name: train_time_s}]\n",
     "metric[0].target: a stopping target needs one metric"),
    ("metric: [{name: test_accuracy, goal: maximize}, {name: train_time_s}]\n"
     "pruner: {type: median}\n", "pruner: Optuna cannot prune a study of several objectives"),
    ("method: cmaes\nmetric: [{name: test_accuracy, goal: maximize}, {name: train_time_s}]\n",
     "method: cmaes searches one objective"),
    ("metric: [{name: accuracy, goal: maximize}, {name: train_time_s}]\n",
     "metric[0].name: got 'accuracy'"),
    ("warm_start: {top: 2}\n", "warm_start.from: missing"),
    ("warm_start: {from: bad, top: 0}\n", "warm_start.top: expected an integer from 1"),
    ("warm_start: {from: bad, topp: 2}\n", "warm_start.topp: unknown key"),
    ("warm_start: {from: bad}\nmethod: grid\n", "warm_start: a grid visits every point"),
    ("warm_start: {from: base}\n", "warm_start.from: names this sweep itself"),
    ("warm_start: {from: missing.yaml}\n", "warm_start.from: no sweep file missing.yaml"),
    ("metric: [{name: test_accuracy, goal: maximize}, {name: train_time_s}]\n"
     "pruner: {type: none, foo: bar}\n", "pruner.foo: unknown key"),
    ("metric: [{name: test_accuracy, goal: maximize}, {name: train_time_s}]\n"
     "early_terminate: {type: none}\n", "early_terminate: Optuna cannot prune"),
    ("warm_start: {from: listy.yaml}\n", "listy.yaml is not a sweep file"),
])
def test_bad_trust_keys_are_one_line_exit_2(tmp_path, text, where):
    given = {line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")}
    base = "".join(line for line in ("name: base\n", "method: random\n", "n_trials: 2\n",
                                     "fixed: {epochs: 1, data.download: false}\n")
                   if line.split(":")[0] not in given)
    body = text if "parameters:" in text else text + \
        "parameters:\n  learning_rate: {values: [0.1]}\n"
    if "parameters:" in text:
        body = text.replace("parameters:\n", "parameters:\n  learning_rate: {values: [0.1]}\n")
    (tmp_path / "base.yaml").write_text(base + body)
    (tmp_path / "listy.yaml").write_text("- a\n- b\n")
    proc = subprocess.run([sys.executable, str(ROOT / "runner.py"), "sweep", "base.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "base.yaml" in lines[0] and where in lines[0], lines[0]
    assert not (tmp_path / "mlruns").exists()


def test_an_unknown_warm_start_study_is_refused_before_anything_is_written(store):
    (store / "tiny_first.yaml").write_text(REPEATS.replace("repeats: 3\n", "").replace(
        "n_trials: 2", "n_trials: 1"))
    assert runner.main(["sweep", "tiny_first.yaml"]) == 0
    client = mlflow_client(store)
    before = [e.name for e in client.search_experiments()]
    (store / "warm.yaml").write_text(REPEATS.replace("name: seeds", "name: warm").replace(
        "repeats: 3", "warm_start: {from: nowhere}"))
    proc = subprocess.run([sys.executable, str(ROOT / "runner.py"), "sweep", "warm.yaml"],
                          cwd=store, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "warm_start.from: no study 'nowhere'" in proc.stderr and "seeds" in proc.stderr
    assert [e.name for e in client.search_experiments()] == before
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(store / "mlruns" / "optuna" / "journal.log")))
    assert optuna.get_all_study_names(storage) == ["seeds"]


def test_a_warm_start_never_places_a_quantile_through_another_law(store, capsys):
    """Every quantile-drawn law is Optuna's FloatDistribution(0, 1): the same quantile
    under another law is another value, so such a trial is skipped, not mistrained."""
    earlier = REPEATS.replace("repeats: 3\n", "").replace("name: seeds", "name: qa").replace(
        "{distribution: log_uniform_values, min: 0.05, max: 0.3}",
        "{distribution: q_log_uniform_values, min: 0.01, max: 0.1, q: 0.01}")
    (store / "qa.yaml").write_text(earlier)
    assert runner.main(["sweep", "qa.yaml"]) == 0
    later = earlier.replace("name: qa", "name: qb\nwarm_start: {from: qa, top: 2}").replace(
        "min: 0.01, max: 0.1, q: 0.01", "min: 0.5, max: 5.0, q: 0.5")
    (store / "qb.yaml").write_text(later)
    capsys.readouterr()
    assert runner.main(["sweep", "qb.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("is drawn through its quantile, from another law") == 2, out
    same = earlier.replace("name: qa", "name: qc\nwarm_start: {from: qa, top: 2}")
    (store / "qc.yaml").write_text(same)
    assert runner.main(["sweep", "qc.yaml", "--n-trials", "2"]) == 0
    placed = sorted(t.user_attrs["value.learning_rate"]
                    for t in journal_study(store, "qc").get_trials())
    best = sorted(journal_study(store, "qa").get_trials(), key=lambda t: t.value)[::-1][:2]
    assert placed == sorted(t.user_attrs["value.learning_rate"] for t in best)


def test_sweeps_sharing_a_project_are_compared_apart(store):
    """Two sweeps in one W&B project share an experiment and their trial numbers: the
    noise table and test group runs by (sweep, trial)."""
    for name, seed in (("pa", 3), ("pb", 5)):
        text = REPEATS.replace("name: seeds", f"name: {name}\nproject: shared").replace(
            "repeats: 3", "repeats: 2").replace("seed: 3", f"seed: {seed}")
        (store / f"{name}.yaml").write_text(text)
        assert runner.main(["sweep", f"{name}.yaml"]) == 0
    from experiments.search import compare
    client = mlflow_client(store)
    frame = compare.runs("shared", client)
    assert set(frame["sweep"]) == {"pa", "pb"} and (frame["seeds"] == 2).all()
    text = compare.report("shared", client, 10)
    assert "(4 seeds)" not in text and " of pa" in text and " of pb" in text


def test_a_changed_repeats_is_another_question(store):
    path = write_sweep(store, REPEATS.replace("n_trials: 2", "n_trials: 1").replace(
        "repeats: 3", "repeats: 2"))
    assert runner.main(["sweep", str(path)]) == 0
    path.write_text(path.read_text().replace("repeats: 2", "repeats: 3"))
    proc = subprocess.run([sys.executable, str(ROOT / "runner.py"), "sweep", str(path),
                           "--n-trials", "2"], cwd=store, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "repeats: 2 -> 3" in proc.stderr, proc.stderr


def test_interrupted_trials_are_retried_as_often_as_it_takes_and_keep_their_origin():
    """A Ctrl-C is never the trial's fault: each interrupted retry is queued again (a
    crash is retried once), and a warm start's origin goes with the retry."""
    from experiments.search.trials import loop as tr

    study = optuna.create_study()
    study.enqueue_trial({"x": 0.5}, user_attrs={"warm_start_from": "early#3"})
    chain = []
    for kind in ("interrupted", "interrupted", "crashed", "crashed"):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        chain.append(trial.number)
        tr.mark_failed(study, study.trials[trial.number], kind)
    trials = study.get_trials()
    # 0 interrupted -> 1, 1 interrupted -> 2, 2 crashed -> 3, 3 (a crash of a retry) ends.
    assert [t.user_attrs.get("retry_of") for t in trials] == [None, 0, 1, 2]
    assert all(t.user_attrs["warm_start_from"] == "early#3" for t in trials)
    assert all(t.params == {"x": 0.5} for t in trials)


def test_a_trade_offs_trial_line_shows_no_stray_std():
    from experiments.search.runs.parent import trial_line
    from experiments.search.spec.sweepfile import SweepSpec

    spec = SweepSpec(path="s.yaml", name="s", objectives=(("test_loss", "minimize"),
                                                ("train_time_s", "minimize")), repeats=3)
    t = optuna.trial.create_trial(values=[1.5, 0.1], user_attrs={
        "test_loss.std": 0.05, "seeds": [0, 1, 2]})
    line = trial_line(t, spec)
    assert "test_loss=1.5000  train_time_s=0.1000" in line and "±" not in line
