"""`runner.py train` and `runner.py autodiff` as a user runs them, on a real SQLite store."""

from pathlib import Path

import pytest

from helpers import mlflow_client, run_cli

OFFLINE = ("--set", "data.download=false")


@pytest.mark.slow
def test_train_records_one_complete_run(tmp_path):
    result = run_cli("train", *OFFLINE, "--set", "epochs=2", "--set", "learning_rate=0.05",
                     "--experiment", "smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "epoch 2/2" in result.stderr
    client = mlflow_client(tmp_path)
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert {"epochs": "2", "batch_size": "64", "learning_rate": "0.05", "grad_mode": "has_aux",
            "seed": "0"}.items() <= params.items()
    for key in ("train_loss", "test_loss", "test_accuracy", "grad_cosine", "grad_norm_ratio",
                "epoch_time_s", "train_time_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
    trained = sorted(client.get_metric_history(run.info.run_id, "train_time_s"),
                     key=lambda m: m.step)
    assert 0 < trained[0].value < trained[1].value  # cumulative seconds of training steps
    accuracy = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert all(0 <= m.value <= 1 for m in accuracy)
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train_loss")}
    assert losses[2] < losses[1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "learning_curves.png"} <= artifacts
    assert run.data.tags["data.source"].endswith("mnist_5k.csv.gz")
    assert run.data.tags["versions.mindspore"] == "2.10.0"
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == run.data.tags["data.digest"]
    # Artifacts live under mlruns/ next to the database.
    assert (tmp_path / "mlruns" / "artifacts").is_dir()


@pytest.mark.slow
def test_bad_set_exits_2_and_writes_nothing(tmp_path):
    for bad in ("epochs=zero", "batch_size=0", "nope=1", "grad_mode=magic", "learning_rate"):
        result = run_cli("train", "--set", bad, cwd=tmp_path)
        assert result.returncode == 2, (bad, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_no_aux_diverges_and_the_run_says_where(tmp_path):
    """The README's case: the seed's loop trained with has_aux=False, at the seed's lr."""
    result = run_cli("train", *OFFLINE, "--set", "grad_mode=no_aux", "--experiment", "nan",
                     cwd=tmp_path)
    assert result.returncode == 3
    assert "diverged" in result.stderr and "Traceback" not in result.stderr
    client = mlflow_client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("nan").experiment_id])
    assert run.info.status == "FAILED"
    tags = run.data.tags
    assert "non-finite loss" in tags["failure_reason"] and tags["outcome"] == "diverged"
    assert tags["diverged_epoch"] == "1"
    step = int(tags["diverged_step"])
    assert 2 <= step <= 63  # within the first epoch's 63 steps (4,000 digits / 64)
    losses = client.get_metric_history(run.info.run_id, "diverging_step_loss")
    # Every finite loss on the way: the steps before the one that became NaN or inf.
    assert sorted(m.step for m in losses) == list(range(1, step))
    assert losses and max(m.value for m in losses) > losses[0].value


@pytest.mark.slow
def test_autodiff_checks_the_seed_claims(tmp_path):
    result = run_cli("autodiff", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok  ") == 3 and "FAIL" not in result.stdout


def test_autodiff_exits_1_when_a_claim_fails(monkeypatch, capsys):
    """A MindSpore whose has_aux gradient also held d(sum z) would break the seed's claim;
    the real gradients are computed, then has_aux's is given that extra term."""
    import runner
    from experiments.core import autodiff

    real = autodiff.gradients

    def broken(seed):
        grads, x = real(seed)
        grads["has_aux"] = grads["no_aux"]
        return grads, x

    monkeypatch.setattr(autodiff, "gradients", broken)
    assert runner.main(["autodiff"]) == 1
    out = capsys.readouterr().out
    assert "FAIL has_aux == loss only" in out and out.count("ok  ") == 2


def test_experiment_names_stay_inside_mlruns(store):
    import runner

    for name in ("../escape", "a#b", "a"):
        assert runner.main(["train", "--set", "epochs=1", "--set", "batch_size=1000",
                            "--set", "data.download=false", "--experiment", name]) == 0
    assert sorted(p.name for p in store.iterdir()) == ["mlruns"]
    client = mlflow_client(store)
    root = (store / "mlruns" / "artifacts").resolve()
    folders = set()
    for name in ("../escape", "a#b", "a"):
        exp = client.get_experiment_by_name(name)
        (run,) = client.search_runs([exp.experiment_id])
        where = Path(run.info.artifact_uri.removeprefix("file://")).resolve()
        assert where.is_relative_to(root) and (where / "model").is_dir(), (name, where)
        folders.add(where.parent.parent)
    assert len(folders) == 3
