"""A study answers one question: a sweep file that asks another is refused before
anything is written, unless --allow-change lets a change through (and records it)."""

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import runner
from helpers import REPEATS, ROOT, TINY_SPACE, journal_study, sweep_file, sweep_runs, write_sweep


@pytest.mark.slow
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
    said = [line for line in capsys.readouterr().err.splitlines() if "changed" in line]
    assert len(said) == 1 and said[0].startswith(f"{changed}: the sweep changed since it "
                                                 "last ran, recorded on its parent run as "
                                                 "sweep.change.1: parameters.learning_rate"), said
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


@pytest.mark.slow
def test_writing_out_a_default_asks_the_same_question(store):
    path = sweep_file(store, TINY_SPACE)
    assert runner.main(["sweep", path]) == 0
    assert runner.main(["sweep", path, "--set", "seed=0", "--set", "data.path=MNIST_Data",
                        "--set", "data.eval_batch_size=500", "--n-trials", "2"]) == 0


@pytest.mark.slow
def test_a_changed_repeats_is_another_question(store):
    path = write_sweep(store, REPEATS.replace("n_trials: 2", "n_trials: 1").replace(
        "repeats: 3", "repeats: 2"))
    assert runner.main(["sweep", str(path)]) == 0
    path.write_text(path.read_text().replace("repeats: 2", "repeats: 3"))
    proc = subprocess.run([sys.executable, str(ROOT / "runner.py"), "sweep", str(path),
                           "--n-trials", "2"], cwd=store, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "repeats: 2 -> 3" in proc.stderr, proc.stderr

