"""W&B's early_terminate is W&B's hyperband rule: the same curves stop at the same epochs
through the `sweeps` package's own `hyperband_stop_runs` and through the runner's pruner."""

import textwrap

import numpy as np
import optuna
import pytest

from experiments.search.spec import sweepfile
from experiments.search.spec.sweepfile import SweepError
from experiments.search.study import samplers

EPOCHS = 12


def spec_of(tmp_path, terminate: str, goal: str = "minimize") -> sweepfile.SweepSpec:
    path = tmp_path / "h.yaml"
    path.write_text(textwrap.dedent(f"""
        method: random
        metric: {{name: test_loss, goal: {goal}}}
        early_terminate: {terminate}
        parameters:
          learning_rate: {{min: 0.01, max: 0.1}}
        """))
    return sweepfile.load(path)


def curves(seed: int, n: int = 60, goal: str = "minimize") -> list[list[float]]:
    """Loss-like curves: each run's own level and speed, with noise; a few with a NaN."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        level, speed = rng.uniform(0.1, 1.0), rng.uniform(0.05, 0.5)
        c = [level + np.exp(-speed * e) + rng.normal(0, 0.03) for e in range(1, EPOCHS + 1)]
        if rng.random() < 0.05:
            c[int(rng.integers(0, EPOCHS))] = float("nan")
        out.append([-v if goal == "maximize" else v for v in c])
    return out


def wandb_stops(runs: list[list[float]], terminate: dict, goal: str) -> list[int | None]:
    """One W&B agent, runs one after another: at every epoch the controller asks
    `sweeps.hyperband_stop_runs` about the running run, the others ended as they ended."""
    from sweeps.hyperband_stopping import hyperband_stop_runs

    import sweeps

    config = {"method": "random", "metric": {"name": "loss", "goal": goal},
              "early_terminate": terminate, "parameters": {"x": {"value": 1}}}
    done, stops = [], []
    for i, c in enumerate(runs):
        stop = None
        for e in range(1, EPOCHS):  # the last epoch ends the run anyway
            me = sweeps.SweepRun(name=str(i), state=sweeps.RunState.running,
                                 history=[{"loss": v} for v in c[:e]])
            if me in hyperband_stop_runs([*done, me], config):
                stop = e
                break
        kept = c[:stop] if stop else c
        done.append(sweeps.SweepRun(name=str(i), state=sweeps.RunState.finished,
                                    history=[{"loss": v} for v in kept]))
        stops.append(stop)
    return stops


def pruner_stops(pruner: optuna.pruners.BasePruner, runs: list[list[float]]) -> list:
    """The same runs as trials of a study with the runner's pruner, reported per epoch as
    the objective reports them (no decision at the last epoch)."""
    study = optuna.create_study(pruner=pruner)
    stops = []
    for c in runs:
        trial, stop = study.ask(), None
        for e in range(1, EPOCHS + 1):
            trial.report(c[e - 1], e)
            if e < EPOCHS and trial.should_prune():
                stop = e
                break
        if stop:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, c[-1] if np.isfinite(c[-1]) else 1e9)
        stops.append(stop)
    return stops


RULES = [
    {"type": "hyperband", "min_iter": 1, "eta": 2},
    {"type": "hyperband", "min_iter": 2, "eta": 3, "strict": False},
    {"type": "hyperband", "max_iter": 10, "s": 2, "eta": 2},  # bands 2, 5
    {"type": "hyperband", "max_iter": 100, "s": 3},  # bands 3, 11, 33
    {"type": "hyperband", "min_iter": 1, "eta": 2.5},  # a fractional eta: 1, 2, 6
    {"type": "hyperband", "max_iter": 9, "s": 2, "eta": 3, "min_iter": 4},  # min_iter ignored
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: ",".join(f"{k}={v}" for k, v in r.items()
                                                               if k != "type"))
@pytest.mark.parametrize("goal", ["minimize", "maximize"])
def test_the_same_runs_stop_at_the_same_epochs_as_wandbs_own_rule(tmp_path, rule, goal):
    import yaml

    spec = spec_of(tmp_path, yaml.safe_dump(rule, default_flow_style=True).strip(), goal)
    runs = curves(seed=len(str(rule)), goal=goal)
    expected = wandb_stops(runs, rule, goal)
    assert pruner_stops(samplers.pruner(spec), runs) == expected
    assert sum(s is not None for s in expected) >= 10  # the rule stops runs: a real check


def test_optunas_hyperband_would_decide_otherwise(tmp_path):
    """What the test above guards against: Optuna's HyperbandPruner on the same curves."""
    rule = RULES[0]
    runs = curves(seed=7)
    optunas = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=EPOCHS,
                                             reduction_factor=2)
    assert pruner_stops(optunas, runs) != wandb_stops(runs, rule, "minimize")


def test_bands_and_strict_are_wandbs(tmp_path):
    assert spec_of(tmp_path, "{type: hyperband, max_iter: 100, s: 3}").pruner.bands == (3, 11, 33)
    p = spec_of(tmp_path, "{type: hyperband, max_iter: 10, s: 2}").pruner
    assert p.bands == (1, 3) and p.strict is True  # W&B's default
    assert "strict true" in str(p) and "bands at epochs 1, 3" in str(p)
    loose = spec_of(tmp_path, "{type: hyperband, min_iter: 1, strict: false}")
    assert loose.pruner.strict is False


@pytest.mark.parametrize("terminate, message", [
    ("{type: hyperband, max_iter: 8, s: 0}", "early_terminate.s: got 0"),
    ("{type: hyperband, max_iter: 8, s: 1.5}", "whole number"),
    ("{type: hyperband, max_iter: 8, min_iter: 2}", "early_terminate.s: missing"),
    ("{type: hyperband, eta: 1}", "early_terminate.eta"),
    ("{type: hyperband, max_iter: 2, s: 1, eta: 3}", "W&B.s hyperband fails on it.*Bands must"),
    ("{type: hyperband}", "give min_iter, or max_iter with s"),
    ("{type: hyperband, min_iter: 1, strict: 1}", "early_terminate.strict"),
    # Found by a hostile review: each was a 51-line traceback.
    ('{type: hyperband, max_iter: 27, s: 2, eta: "3"}', "early_terminate.eta: .*got '3'"),
    ('{type: hyperband, max_iter: 27, s: "2"}', "early_terminate.s"),
    ("{type: hyperband, min_iter: 1, eta: 1.0e300}", "fails on it .OverflowError"),
])
def test_what_wandbs_engine_cannot_run_is_one_line(tmp_path, terminate, message):
    with pytest.raises(SweepError, match=message):
        spec_of(tmp_path, terminate)


def test_nothing_is_pruned_unless_the_file_asks(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text("method: random\nmetric: {name: test_loss}\nn_trials: 3\n"
                    "parameters:\n  learning_rate: {min: 0.01, max: 0.1}\n")
    spec = sweepfile.load(path)
    assert spec.pruner.type == "none"
    assert isinstance(samplers.pruner(spec), optuna.pruners.NopPruner)
    path.write_text(path.read_text() + "pruner: {type: median}\n")
    assert sweepfile.load(path).pruner.type == "median"


def test_wandbs_large_iterations_are_taken_and_a_band_never_reached_is_said(tmp_path):
    """W&B bounds min_iter and max_iter by nothing; a first band past the trials' epochs
    stops nothing, and the file is told so."""
    assert spec_of(tmp_path, "{type: hyperband, min_iter: 100000}").pruner.bands[0] == 100000
    far = spec_of(tmp_path, "{type: hyperband, max_iter: 27, s: 2}")  # bands 3, 9; 3 epochs
    assert any("no trial is stopped early" in w for w in far.warnings)
    near = spec_of(tmp_path, "{type: hyperband, min_iter: 1}")
    assert not near.warnings


@pytest.mark.slow
def test_a_resumed_sweep_says_when_its_pruner_changed(store, capsys):
    """A file without pruner or early_terminate was pruned by the median rule before W&B's
    engine decided it; now it is not pruned, and a resumed study says so."""
    import runner

    path = store / "p.yaml"
    body = ("method: random\nmetric: {name: test_loss}\nn_trials: 1\n"
            "fixed: {epochs: 1, batch_size: 128, data.download: false}\n"
            "parameters:\n  learning_rate: {min: 0.01, max: 0.1}\n")
    path.write_text(body + "pruner: {type: median}\n")
    assert runner.main(["sweep", str(path)]) == 0
    path.write_text(body)
    capsys.readouterr()
    assert runner.main(["sweep", str(path), "--n-trials", "2"]) == 0
    assert ("the pruner changed since this sweep last ran: median (warmup 1 epochs) -> none"
            in capsys.readouterr().err)


def test_a_trial_cut_short_does_not_set_a_bands_threshold_beside_its_retry(tmp_path):
    """Found by a hostile review: after a Ctrl-C, the cut-short trial's partial curve and
    its retry's both counted in W&B's thresholds, and stopped a trial that the same sweep
    without the interrupt keeps. A cut-short trial is left out, as for bayes."""
    spec = spec_of(tmp_path, "{type: hyperband, min_iter: 1, eta: 3}")
    study = optuna.create_study(pruner=samplers.pruner(spec))
    for curve_, cut in (([2.012], True), ([0.944], True), ([0.944, 0.495], False),
                        ([2.012, 1.459], False)):
        attrs = {"fail_kind": "interrupted"} if cut else {}
        state = optuna.trial.TrialState.FAIL if cut else optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            state=state, value=None if cut else curve_[-1], user_attrs=attrs,
            intermediate_values=dict(enumerate(curve_, start=1))))
    trial = study.ask()
    trial.report(0.95, 1)
    assert not trial.should_prune()  # thresholds from the two retries only
