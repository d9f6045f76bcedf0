"""`sweep --dry-run`: the sweep as understood and the configs its first trials train,
checked as the run checks, with nothing written."""

import pytest

import runner
from helpers import TINY_SPACE, journal_study, sweep_file


@pytest.mark.slow
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


def dry_run_configs(capsys) -> list[dict]:
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if "configs a new study trains" in line)
    configs = []
    for line in out[start + 1:]:
        items = line.split(". ", 1)[1].split(", ")
        configs.append(dict(item.split("=", 1) for item in items))
    return configs


@pytest.mark.slow
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

