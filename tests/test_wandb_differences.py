"""Every way the runner still differs from W&B is written down with its reason, and the
dry run names the ones a file touches."""

import textwrap

import runner
from experiments.search.spec import differences
from helpers import ROOT


def test_every_difference_is_documented_with_its_reason():
    text = (ROOT / "docs" / "wandb.md").read_text()
    for d in differences.DIFFERENCES:
        assert f"- **{d.name}.**" in text, d.name


def dry_run(tmp_path, monkeypatch, capsys, body: str) -> list[str]:
    path = tmp_path / "d.yaml"
    path.write_text(textwrap.dedent(body))
    monkeypatch.chdir(tmp_path)
    assert runner.main(["sweep", str(path), "--dry-run"]) == 0
    return [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("differs from W&B")]


def test_the_dry_run_names_the_differences_a_file_touches(tmp_path, monkeypatch, capsys):
    lines = dry_run(tmp_path, monkeypatch, capsys, """
        program: train.py
        method: grid
        metric: {name: test_loss, goal: minimize, impute: best}
        parameters:
          batch_size: {values: [32, 64]}
        """)
    said = " ".join(lines)
    assert "program/command are recorded, not run" in said
    assert "grid visits its points in an order shuffled" in said
    assert "metric.impute" in said
    assert "tpe/cmaes" not in said and "hyperband" not in said
    lines = dry_run(tmp_path, monkeypatch, capsys, """
        method: tpe
        metric: {name: test_loss, goal: minimize}
        pruner: {type: median}
        parameters:
          learning_rate: {distribution: normal, mu: 0.1, sigma: 0.02}
        """)
    said = " ".join(lines)
    assert "Optuna's, not W&B's" in said and "`pruner` is this runner's" in said
    assert "fails that trial" in said and "1e-12" in said
    assert "program/command" not in said and "grid" not in said
