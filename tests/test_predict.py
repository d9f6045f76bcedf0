"""`runner.py predict`: a logged model on image files, by run id or a sweep's best, and
the model served as MLflow serves it."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import free_port, get_json, mlflow_client, run_cli, wait_http


@pytest.mark.slow
def test_predict_on_png_digits_matches_the_run(project, mnist, tmp_path):
    import mlflow.pyfunc
    from PIL import Image

    client = mlflow_client(project)
    run_id = best_run(project)
    assert client.get_run(run_id).data.tags["best"] == "true"
    paths = []
    for i, image in enumerate(mnist.test_images):
        path = tmp_path / f"{i}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    model = mlflow.pyfunc.load_model(str(project / "mlruns" / "artifacts" / "look" / run_id /
                                         "artifacts" / "model"))
    python_model = model.unwrap_python_model()
    result = python_model.predict(None, paths)
    accuracy = float((result["digit"].to_numpy() == mnist.test_labels).mean())
    expected = client.get_run(run_id).data.metrics["test_accuracy"]
    assert accuracy == pytest.approx(expected, abs=1e-9) and accuracy >= 0.8
    np.testing.assert_allclose(result[[f"p{i}" for i in range(10)]].sum(axis=1), 1.0, atol=1e-6)

    # The CLI, with a large, dark-on-light version of a digit among them.
    big = tmp_path / "big.jpg"
    Image.fromarray(255 - mnist.test_images[7]).resize((300, 300)).save(big)
    blank = tmp_path / "blank.jpg"  # a photo of empty paper: one colour, a little noise
    noise = np.random.default_rng(0).integers(0, 12, (400, 300))
    Image.fromarray((230 + noise).astype(np.uint8)).save(blank)
    cli = run_cli("predict", "--model", "best:look.yaml", paths[0], paths[7], str(big),
                  str(blank), cwd=project)
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.strip().splitlines()
    assert len(lines) == 4 and all("digit" in line for line in lines[:3])
    assert lines[1].split()[2] == lines[2].split()[2], "resized inverted digit reads the same"
    assert lines[3].endswith("blank: nothing drawn"), lines[3]
    frame = python_model.predict(None, [paths[0], str(blank)])
    assert list(frame["blank"]) == [False, True] and frame["digit"].iloc[1] == -1


def best_run(project) -> str:
    client = mlflow_client(project)
    exp = client.get_experiment_by_name("look")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`sweep.parent` = 'true'")
    return parent.data.tags["best_run_id"]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--model", "best:look.yaml", "missing.png"], "missing.png: no such file"),
    (["--model", "best:look.yaml", "look.yaml"], "not a readable image"),
    (["--model", "0123456789abcdef", "look.yaml"], "not a readable image"),
])
def test_predict_bad_input_is_exit_2(project, args, message):
    result = run_cli("predict", *args, cwd=project)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_predict_unknown_run_is_exit_2(project, tmp_path, mnist):
    from PIL import Image

    png = tmp_path / "x.png"
    Image.fromarray(mnist.test_images[0]).save(png)
    result = run_cli("predict", "--model", "0123456789abcdef", str(png), cwd=project)
    assert result.returncode == 2 and "no run '0123456789abcdef'" in result.stderr


def test_wrong_array_shape_is_refused():
    from experiments.core.digits import PredictError, as_digits

    with pytest.raises(PredictError, match="shape"):
        as_digits(np.zeros((2, 27, 28)))
    with pytest.raises(PredictError, match="0 to 255"):
        as_digits(np.full((1, 28, 28), 300))
    with pytest.raises(PredictError, match="whole"):
        as_digits(np.full((1, 28, 28), 0.5))
    with pytest.raises(PredictError, match="at least one digit"):
        as_digits(np.zeros((0, 28, 28), np.uint8))


@pytest.mark.slow
def test_served_model_answers(project, mnist):
    port = free_port()
    run_id = best_run(project)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # serve runs uvicorn from PATH
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "--env-manager",
                             "local", "-m", f"runs:/{run_id}/model", "-h", "127.0.0.1", "-p",
                             str(port)], cwd=project, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping")
        digits = mnist.test_images[:20]
        answer = get_json(f"http://127.0.0.1:{port}/invocations", {"inputs": digits.tolist()})
        predicted = [p["digit"] for p in answer["predictions"]]
        local = compare_local(project, run_id, digits)
        assert predicted == local
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def compare_local(project, run_id, digits):
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(project / "mlruns" / "artifacts" / "look" / run_id /
                                         "artifacts" / "model"))
    return model.predict(digits)["digit"].tolist()

