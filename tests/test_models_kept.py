"""`models:` in a sweep file: which trainings keep their pyfunc model, and why each run
says it kept one or not."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import SMALL_SWEEP, journal_study, mlflow_client, run_cli, write_sweep


@pytest.mark.slow
def test_top_k_keeps_the_models_of_the_best_so_far(tmp_path):
    path = write_sweep(tmp_path, SMALL_SWEEP + "models: top_k 2\n")
    done = run_cli("sweep", str(path), "--workers", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    models = _models(tmp_path)
    trials = [t for t in journal_study(tmp_path, "m").trials if t.state.name == "COMPLETE"]
    kept = 0
    for t in trials:
        earlier = [u.value for u in trials if u.number < t.number]
        rank = sum(v > t.value for v in earlier)
        has, why = models[f"trial-{t.number}-has_aux"]
        assert has == (rank < 2), (t.number, why)
        assert why.startswith("logged" if has else "not logged") and "top_k 2" in why
        kept += has
    assert 0 < kept < len(trials)  # the seed makes both cases happen
    best = max(trials, key=lambda t: t.value)
    assert models[f"trial-{best.number}-has_aux"][0]  # the best trial always has its model


def _models(folder: Path) -> dict[str, tuple[bool, str]]:
    """Run name -> (has a model, its `model` tag), for every trial run."""
    client = mlflow_client(folder)
    out = {}
    for run in client.search_runs([client.get_experiment_by_name("m").experiment_id]):
        if "trial" in run.data.tags:
            names = [a.path for a in client.list_artifacts(run.info.run_id)]
            out[run.info.run_name] = ("model" in names, run.data.tags.get("model", ""))
    return out


@pytest.mark.slow
def test_models_none_keeps_none_and_all_keeps_ablations_too(tmp_path):
    (tmp_path / "none").mkdir()
    (tmp_path / "all").mkdir()
    path = write_sweep(tmp_path / "none", SMALL_SWEEP.replace("n_trials: 5", "n_trials: 2")
                       + "models: none\n")
    assert run_cli("sweep", str(path), cwd=tmp_path / "none").returncode == 0
    assert not any(has for has, _ in _models(tmp_path / "none").values())
    path = write_sweep(tmp_path / "all", SMALL_SWEEP.replace("n_trials: 5", "n_trials: 2")
                       + "models: all\nablation: {grad_mode: [has_aux, stop_gradient]}\n")
    assert run_cli("sweep", str(path), cwd=tmp_path / "all").returncode == 0
    models = _models(tmp_path / "all")
    assert len(models) == 4 and all(has for has, _ in models.values())


@pytest.mark.slow
def test_with_repeats_or_a_trade_off_every_objective_run_keeps_its_model(tmp_path):
    """Their trial's rank is known only at its end, when the weights are gone."""
    text = SMALL_SWEEP.replace("n_trials: 5", "n_trials: 2").replace(
        "metric: {name: test_accuracy, goal: maximize}",
        "metric: [{name: test_accuracy, goal: maximize}, {name: train_time_s, goal: minimize}]")
    path = write_sweep(tmp_path, text + "models: best\n")
    done = run_cli("sweep", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    models = _models(tmp_path)
    assert len(models) == 2 and all(has for has, _ in models.values())
    assert all("a trade-off ranks no trial first" in why for _, why in models.values())


@pytest.mark.parametrize("value", ["top_k 0", "top_k", "some", "{top_k: -1}", "3",
                                   "top_k 1001", "[best]"])
def test_a_bad_models_value_is_refused(tmp_path, value):
    path = write_sweep(tmp_path, SMALL_SWEEP + f"models: {value}\n")
    done = run_cli("sweep", str(path), cwd=tmp_path)
    assert done.returncode == 2
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and str(path) in line and "models" in line
    assert "best, all, none or top_k N (N from 1 to 1000)" in line
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_predict_best_says_when_the_best_run_kept_no_model(tmp_path, mnist):
    from PIL import Image

    path = write_sweep(tmp_path, SMALL_SWEEP.replace("n_trials: 5", "n_trials: 1")
                       + "models: none\n")
    assert run_cli("sweep", str(path), cwd=tmp_path).returncode == 0
    png = tmp_path / "x.png"
    Image.fromarray(mnist.test_images[0]).save(png)
    done = run_cli("predict", "--model", f"best:{path}", str(png), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "the best trial's run" in line
    assert "has no logged model (not logged (models: none))" in line

