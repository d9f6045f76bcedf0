"""Trade-offs (a list of metrics): Optuna's Pareto front, tagged on the runs and shown in
the terminal."""

import optuna

import runner
from helpers import journal_study, sweep_runs, write_sweep


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
    from experiments.search import compare, report
    frame = compare.runs(str(store / "sweep.yaml"), client)
    assert set(frame.loc[frame["pareto"], "trial"]) == front
    assert "pareto" in report.report(str(store / "sweep.yaml"), client, 10)


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


def test_the_pareto_front_is_optunas(store):
    """objectives.pareto (used while the sweep runs) equals Optuna's best_trials, ties too."""
    from experiments.search.spec.metrics import pareto

    study = optuna.create_study(directions=["maximize", "minimize"])
    for values in ([0.9, 2.0], [0.9, 2.0], [0.8, 1.0], [0.7, 1.5], [0.95, 3.0], [0.95, 3.0],
                   [0.5, 0.5], [0.5, 0.6]):
        study.add_trial(optuna.trial.create_trial(values=values))
    mine = [t.number for t in pareto(study.trials, (("a", "maximize"), ("b", "minimize")))]
    assert mine == [t.number for t in study.best_trials]


def test_a_trade_offs_trial_line_shows_no_stray_std():
    from experiments.search.runs.parent import trial_line
    from experiments.search.spec.sweepfile import SweepSpec

    spec = SweepSpec(path="s.yaml", name="s", objectives=(("test_loss", "minimize"),
                                                ("train_time_s", "minimize")), repeats=3)
    t = optuna.trial.create_trial(values=[1.5, 0.1], user_attrs={
        "test_loss.std": 0.05, "seeds": [0, 1, 2]})
    line = trial_line(t, spec)
    assert "test_loss=1.5000  train_time_s=0.1000" in line and "±" not in line

