"""`runner.py train` and `runner.py autodiff` as a user runs them, on a real SQLite store."""

from conftest import mlflow_client, run_cli

OFFLINE = ("--set", "data.download=false")


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
                "epoch_time_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
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


def test_bad_set_exits_2_and_writes_nothing(tmp_path):
    for bad in ("epochs=zero", "batch_size=0", "nope=1", "grad_mode=magic", "learning_rate"):
        result = run_cli("train", "--set", bad, cwd=tmp_path)
        assert result.returncode == 2, (bad, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_divergence_marks_the_run_failed(tmp_path):
    result = run_cli("train", *OFFLINE, "--set", "learning_rate=1000", "--experiment", "nan",
                     cwd=tmp_path)
    assert result.returncode == 3
    assert "diverged" in result.stderr and "Traceback" not in result.stderr
    client = mlflow_client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("nan").experiment_id])
    assert run.info.status == "FAILED"
    assert "non-finite loss" in run.data.tags["failure_reason"]
    assert int(run.data.tags["diverged_step"]) >= 1


def test_autodiff_checks_the_seed_claims(tmp_path):
    result = run_cli("autodiff", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok  ") == 3 and "FAIL" not in result.stdout
