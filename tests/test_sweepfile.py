"""Sweep files: the shipped ones are valid; each kind of mistake is exit 2 naming the key."""

from pathlib import Path

import pytest

import runner
from experiments.search.spec import sweepfile

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
name: t
method: tpe
metric: {name: test_accuracy, goal: maximize}
n_trials: 3
pruner: {type: median, warmup_epochs: 1}
fixed: {epochs: 1}
parameters:
  learning_rate: {distribution: log_uniform_values, min: 1.0e-3, max: 1.0}
"""

# (what is wrong, file text, the key path the message must name)
BAD = [
    ("unknown top key", GOOD + "n_trails: 3\n", "n_trails"),
    ("typo'd distribution", GOOD.replace("log_uniform_values", "log_uniform_value"),
     "parameters.learning_rate.distribution"),
    ("log_uniform exponents beyond float32", GOOD.replace("log_uniform_values", "log_uniform"
                                                          ).replace("min: 1.0e-3", "min: -99"),
     "parameters.learning_rate"),
    ("min >= max", GOOD.replace("max: 1.0", "max: 1.0e-4"), "parameters.learning_rate.min"),
    ("log scale min <= 0", GOOD.replace("min: 1.0e-3", "min: 0"),
     "parameters.learning_rate.min"),
    ("unknown config key", GOOD.replace("  learning_rate:", "  learning_rte:"),
     "parameters.learning_rte"),
    ("unknown metric", GOOD.replace("name: test_accuracy", "name: accuracy"), "metric.name"),
    ("bad goal", GOOD.replace("goal: maximize", "goal: up"), "metric.goal"),
    ("n_trials < 1", GOOD.replace("n_trials: 3", "n_trials: 0"), "n_trials"),
    ("n_trials not int", GOOD.replace("n_trials: 3", "n_trials: many"), "n_trials"),
    ("malformed YAML", GOOD + "parameters: [\n", "malformed YAML"),
    ("unknown method", GOOD.replace("method: tpe", "method: hyperopt"), "method"),
    ("unknown pruner", GOOD.replace("type: median", "type: asha"), "pruner.type"),
    ("bad fixed value", GOOD.replace("{epochs: 1}", "{epochs: -1}"), "fixed.epochs"),
    ("unknown fixed key", GOOD.replace("{epochs: 1}", "{epoch: 1}"), "fixed.epoch"),
    ("searched and fixed", GOOD.replace("{epochs: 1}", "{learning_rate: 0.1}"),
     "parameters.learning_rate"),
    ("empty values", GOOD.replace("{distribution: log_uniform_values, min: 1.0e-3, max: 1.0}",
                                  "{values: []}"), "parameters.learning_rate.values"),
    ("bad categorical value", GOOD.replace(
        "  learning_rate: {distribution: log_uniform_values, min: 1.0e-3, max: 1.0}",
        "  batch_size: {values: [32, big]}"), "parameters.batch_size.values[1]"),
    ("float dist on int key", GOOD.replace(
        "  learning_rate: {distribution: log_uniform_values, min: 1.0e-3, max: 1.0}",
        "  batch_size: {distribution: uniform, min: 16, max: 64}"),
     "parameters.batch_size.distribution"),
    ("grid needs values", GOOD.replace("method: tpe", "method: grid"),
     "parameters.learning_rate"),
    ("bad ablation mode", GOOD + "ablation: {grad_mode: [has_aux, no_aux_]}\n",
     "ablation.grad_mode[1]"),
    ("ablation and fixed grad_mode", GOOD.replace("{epochs: 1}", "{grad_mode: no_aux}")
     + "ablation: {grad_mode: [has_aux, no_aux]}\n", "ablation.grad_mode"),
    ("not a mapping", "- a\n- b\n", "(top level)"),
    ("missing parameters", "name: t\n", "parameters"),
    ("bad name", GOOD.replace("name: t\n", "name: \"a'b\"\n"), "name"),
    ("q on uniform", GOOD.replace("max: 1.0}", "max: 1.0, q: 0.1}"),
     "parameters.learning_rate.q"),
    ("negative timeout", GOOD + "timeout_s: -5\n", "timeout_s"),
    ("python object tag", GOOD + "seed: !!python/object/apply:os.getcwd []\n",
     "malformed YAML"),
]


@pytest.mark.parametrize("shipped", sorted((ROOT / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_sweeps_are_valid(shipped):
    spec = sweepfile.load(shipped)
    assert spec.parameters and spec.n_trials >= 1


@pytest.mark.parametrize("what, text, key", BAD, ids=[b[0] for b in BAD])
def test_bad_sweep_exits_2_naming_the_key(tmp_path, monkeypatch, capsys, what, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    monkeypatch.chdir(tmp_path)
    code = runner.main(["sweep", str(path)])
    err = capsys.readouterr().err
    assert code == 2, what
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0] and key in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"], "something was written"


def test_missing_file_is_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert runner.main(["sweep", "nope.yaml"]) == 2
    assert "nope.yaml: cannot read" in capsys.readouterr().err


def test_dry_run_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert runner.main(["sweep", str(ROOT / "sweeps" / "lr.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate: log_uniform_values [0.001, 1.0]" in out
    assert out.count("learning_rate=") == 3
    assert list(tmp_path.iterdir()) == []


def test_set_overrides_merge_into_fixed(tmp_path):
    spec = sweepfile.load(ROOT / "sweeps" / "lr.yaml", {"epochs": 1})
    assert spec.fixed["epochs"] == 1
    with pytest.raises(sweepfile.SweepError, match=r"parameters\.learning_rate"):
        sweepfile.load(ROOT / "sweeps" / "lr.yaml", {"learning_rate": 0.1})
