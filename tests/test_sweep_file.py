"""Sweep files: every shipped one is valid, and every mistake is one line naming the file
and the key, exit 2, nothing written."""

import os
import subprocess
import sys

import pytest

import runner
from experiments.search.spec import sweepfile
from helpers import FAST, ROOT, run_cli, sweep_file


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
    ("missing parameters", "name: t\nmethod: random\n", "parameters"),
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


@pytest.mark.parametrize("command", [["sweep"], ["sweep", "--dry-run"], ["status"]])
def test_a_fifo_is_refused_not_waited_on(tmp_path, command):
    """A FIFO given as the sweep file blocked the read for ever (review), deaf to SIGTERM."""
    os.mkfifo(tmp_path / "f.yaml")
    done = run_cli(command[0], "f.yaml", *command[1:], cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: f.yaml: cannot read: not a regular file (a FIFO or a device)"]
    assert [p.name for p in tmp_path.iterdir()] == ["f.yaml"]


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


def test_every_mistake_of_a_sweep_file_is_told_in_one_go(tmp_path):
    """A W&B file with three mistakes took three runs, one error each."""
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nmethod: bayes\nmetric: {name: test_accuracy, goal: maximise}\n"
                    "parameters:\n"
                    "  learning_rate: {distribution: log_uniform_values, min: 0.1, max: 0.01}\n"
                    "  epocs: {value: 2}\n")
    result = run_cli("sweep", str(path), cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ")[2] for line in lines] == [
        "metric.goal", "parameters.learning_rate.min", "parameters.epocs"], lines
    assert all(line.startswith(f"error: {path}: ") for line in lines)
    assert "did you mean maximize?" in lines[0] and "did you mean epochs?" in lines[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_a_config_keys_own_check_is_told_with_the_files_other_mistakes(tmp_path):
    """A text check (ConfigError) inside the file escaped the collection, as hypothesis
    found in CI: `{name: null, project: "\\b"}`."""
    path = tmp_path / "s.yaml"
    path.write_text('name: null\nproject: "\\b"\nmethod: random\n'
                    'parameters: {learning_rate: {value: 0.1}}\n')
    with pytest.raises(sweepfile.SweepError) as caught:
        sweepfile.load(path)
    assert [line.split(": ")[1] for line in caught.value.lines] == ["name", "project"]
