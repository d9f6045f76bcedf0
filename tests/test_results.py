"""Looking at results: pandas comparison, the real MLflow UI in Chromium, predict, serving.

One small real sweep (two learning rates, each trained with has_aux and no_aux) is run
once for the module; every test reads it.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import runner
from conftest import ARTIFACTS, ROOT, mlflow_client, run_cli
from experiments.search import compare

SWEEP = """
name: look
method: grid
n_trials: 2
seed: 0
pruner: {type: none}
fixed: {epochs: 3, batch_size: 128, data.download: false}
parameters:
  learning_rate: {values: [0.2, 0.01]}
ablation: {grad_mode: [has_aux, no_aux]}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("project")
    (folder / "look.yaml").write_text(SWEEP)
    before, env = os.getcwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(folder)
    try:
        assert runner.main(["sweep", "look.yaml"]) == 0
    finally:
        os.chdir(before)
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env
    return folder


def test_runs_frame_has_typed_rows(project):
    client = mlflow_client(project)
    frame = compare.runs(str(project / "look.yaml"), client)
    assert len(frame) == 4
    assert sorted(frame["grad_mode"]) == ["has_aux", "has_aux", "no_aux", "no_aux"]
    assert frame["trial"].dtype == "Int64" and set(frame["trial"]) == {0, 1}
    assert frame["learning_rate"].dtype == np.float64
    assert frame["epochs"].dtype == np.int64 and set(frame["epochs"]) == {3}
    assert pd.api.types.is_float_dtype(frame["final_test_accuracy"])
    objective = frame[frame["role"] == "objective"]
    assert objective["final_test_accuracy"].is_monotonic_decreasing
    assert (objective["best_epoch"].between(1, 3)).all()
    assert (objective["best_test_accuracy"] >= objective["final_test_accuracy"]).all()
    assert frame["run_id"].is_unique and (frame["duration_s"] > 0).all()


def test_history_is_long_and_complete(project):
    client = mlflow_client(project)
    hist = compare.history("look", client)
    assert list(hist.columns) == ["run_id", "trial", "grad_mode", "epoch", "metric", "value"]
    assert hist["epoch"].dtype == np.int64 and hist["value"].dtype == np.float64
    has_aux = hist[hist["grad_mode"] == "has_aux"]
    # 2 trials x 3 epochs x 7 metrics, each point once.
    assert len(has_aux) == 42 and set(has_aux["metric"]) == set(compare.EPOCH_METRICS)
    assert not has_aux.duplicated(["run_id", "epoch", "metric"]).any()
    frame = compare.runs("look", client)
    for _, row in frame[frame["grad_mode"] == "has_aux"].iterrows():
        last = has_aux[(has_aux.run_id == row.run_id) & (has_aux.metric == "test_accuracy")]
        assert last.sort_values("epoch")["value"].iloc[-1] == row.final_test_accuracy


def test_paired_pivot_matches_runs(project):
    frame = compare.runs("look", mlflow_client(project))
    pairs = compare.paired(frame)
    assert len(pairs) == 2
    for _, row in pairs.iterrows():
        mine = frame[frame["trial"] == row["trial"]].set_index("grad_mode")
        for mode in ("has_aux", "no_aux"):
            got, want = row[f"final_test_accuracy[{mode}]"], mine.loc[mode, "final_test_accuracy"]
            assert (np.isnan(got) and np.isnan(want)) or got == want
        diff = row["final_test_accuracy[no_aux - has_aux]"]
        expected = mine.loc["no_aux", "final_test_accuracy"] - mine.loc[
            "has_aux", "final_test_accuracy"]
        assert (np.isnan(diff) and np.isnan(expected)) or diff == pytest.approx(expected)
        assert row["diverged[no_aux]"] == bool(mine.loc["no_aux", "diverged"])


@pytest.mark.slow
def test_compare_cli_writes_csv_and_parquet(project):
    result = run_cli("compare", "look.yaml", "--csv", "out/runs.csv", "--history",
                     "out/history.parquet", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "final_test_accuracy" in result.stdout
    assert len(pd.read_csv(project / "out" / "runs.csv")) == 4
    assert len(pd.read_parquet(project / "out" / "history.parquet")) > 0
    bad = run_cli("compare", "--experiment", "nope", cwd=project)
    assert bad.returncode == 2 and "no MLflow experiment named 'nope'" in bad.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout}s")


def get_json(url: str, payload: dict | None = None) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def ui(project):
    """`runner.py ui` as a user starts it: its address and what it printed."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = project / f"ui-{port}.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen([sys.executable, str(ROOT / "runner.py"), "ui", "--port",
                                 str(port)], cwd=project, env=env, start_new_session=True,
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        end = time.time() + 60
        while "(sweep 'look')" not in out.read_text() and time.time() < end:
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", out, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants (the server runs in a session
    of its own, so a process group would miss it)."""
    procs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # After the name: state, ppid, ..., rss (in pages) is the 22nd field.
        procs[int(stat.parent.name)] = (int(fields[1]), int(fields[21]))
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, (ppid, _) in procs.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    assert len(tree) >= 3, "runner.py ui, the mlflow server and its uvicorn should all run"
    return sum(procs[p][1] for p in tree if p in procs) * os.sysconf("SC_PAGE_SIZE") / 2**20


def chromium_page(url: str, folder: Path, name: str) -> str:
    """The page's text as headless Chromium renders it; a screenshot lands in ARTIFACTS."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed for the UI test (.ci/run installs it)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1400,1000", "--virtual-time-budget=20000"]
    dom = ""
    for extra in (["--dump-dom"], [f"--screenshot={ARTIFACTS / name}"]):
        profile = folder / f"chromium-{name}-{extra[0][2:8]}"  # a newcomer's fresh browser
        result = subprocess.run([chromium, *flags, f"--user-data-dir={profile}", *extra, url],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        dom = dom or result.stdout
    assert (ARTIFACTS / name).stat().st_size > 10_000
    return " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)[^>]*>.*?</\1>", "", dom,
                                                   flags=re.S)).split())


@pytest.mark.slow
def test_ui_lands_on_the_sweep(ui, project):
    base, out, proc = ui
    api = f"{base}/api/2.0/mlflow"
    exp = get_json(f"{api}/experiments/get-by-name?experiment_name=look")["experiment"]
    found = get_json(f"{api}/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in found]
    parent_id = next(r["info"]["run_id"] for r, t in zip(found, tags, strict=True)
                     if t.get("sweep.parent") == "true")
    names = sorted(t["mlflow.runName"] for t in tags if t.get("sweep.parent") != "true")
    assert names == ["trial-0-has_aux", "trial-0-no_aux", "trial-1-has_aux", "trial-1-no_aux"]

    # First the link, then nothing else: MLflow's request log goes to mlruns/ui.log.
    lines = out.read_text().splitlines()
    assert lines[0].startswith(f"MLflow UI at {base}"), lines
    (link,) = [line.split(": ", 1)[1] for line in lines if "(sweep 'look')" in line]
    assert "workflowType=machine_learning" in link and len(lines) == 2, lines
    # Only what the UI needs: no job runner and task consumers (2.4 GB with them).
    assert tree_rss_mb(proc.pid) < 1024

    # The printed link opens the Model training view with every trial run as a row.
    text = chromium_page(link, project, "ui_runs_view.png")
    assert "Run Name" in text and "5 matching runs" in text, text[:2000]
    assert all(name in text for name in names), text[:2000]
    assert "Token Usage" not in text and "Latency" not in text  # not GenAI's overview

    # The parent run's page: its description tells the sweep, top trials linked by name.
    page = f"{base}/#/experiments/{exp['experiment_id']}/runs/{parent_id}"
    text = chromium_page(page + "?workflowType=machine_learning", project,
                         "ui_parent_run.png")
    assert "Sweep look : maximize test_accuracy Best so far: test_accuracy 0." in text, \
        text[:3000]
    assert "2 of 2 trials counted" in text and "rank trial test_accuracy" in text, text[:3000]
    best = get_json(f"{api}/runs/get?run_id={parent_id}")["run"]["data"]["tags"]
    best_id = next(t["value"] for t in best if t["key"] == "best_run_id")
    best_name = next(t["mlflow.runName"] for r, t in zip(found, tags, strict=True)
                     if r["info"]["run_id"] == best_id)
    assert "rank trial test_accuracy learning_rate run 1 " in text
    assert text.split("rank trial test_accuracy learning_rate run 1 ")[1].split()[3] == \
        best_name
    assert "Paired ablation" in text

    # However runner.py ui dies, its server goes with it (kill -9 cannot be handled).
    os.kill(proc.pid, 9)
    end = time.time() + 30
    while time.time() < end:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            time.sleep(0.5)
        except OSError:
            break
    else:
        raise AssertionError("the MLflow server outlived a killed `runner.py ui`")


def best_run(project) -> str:
    client = mlflow_client(project)
    exp = client.get_experiment_by_name("look")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`sweep.parent` = 'true'")
    return parent.data.tags["best_run_id"]


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


def test_paired_has_no_answer_for_a_mode_that_did_not_run():
    """A variant that never ran was reported as diverged (NaN cast to bool is True)."""
    frame = pd.DataFrame({
        "trial": pd.array([0, 0, 1], dtype="Int64"), "grad_mode": ["has_aux", "no_aux",
                                                                   "has_aux"],
        "role": ["objective", "ablation", "objective"], "fail_kind": ["", "", ""],
        "diverged": [False, True, False], "final_test_accuracy": [0.9, 0.1, 0.8],
        "final_test_loss": [0.3, 9.0, 0.4], "final_train_loss": [0.2, 9.0, 0.3]})
    pairs = compare.paired(frame).set_index("trial")
    assert pairs.loc[0, "diverged[no_aux]"] is True or pairs.loc[0, "diverged[no_aux]"]
    assert pd.isna(pairs.loc[1, "diverged[no_aux]"])
    assert not pairs.loc[1, "diverged[has_aux]"]
    assert pd.isna(pairs.loc[1, "final_test_accuracy[no_aux - has_aux]"])


@pytest.mark.slow
def test_compare_top_prints_that_many_rows(project):
    result = run_cli("compare", "look.yaml", "--top", "1", cwd=project)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    # A header and one run, then what one seed per configuration can say of the noise.
    assert len(lines) == 3 and "final_test_accuracy" in lines[0]
    assert lines[2].startswith("noise: unknown, one seed per configuration")
    best = compare.runs("look", mlflow_client(project)).iloc[0]
    assert best.run_id in lines[1]


def test_each_trial_run_carries_its_pictures(project, mnist):
    from PIL import Image

    client = mlflow_client(project)
    frame = compare.runs("look", client)
    run = frame[(frame["grad_mode"] == "has_aux")].iloc[0]
    folder = Path(client.download_artifacts(run.run_id, "", str(project / "pictures")))
    confusion = Image.open(folder / "confusion_matrix.png")
    digits = Image.open(folder / "test_digits.png")
    curves = Image.open(folder / "learning_curves.png")
    assert confusion.size == (60 + 440 + 20, 56 + 440 + 44)  # ten 44-pixel cells a side
    assert digits.size == (8 * 100, 3 * 110)  # 24 digits, 8 a row, at 3x scale
    assert curves.size == (900, 360)
    # The confusion matrix is drawn from the run's own predictions: its diagonal (the dark
    # cells of correct digits) holds most of the ink when accuracy is high.
    pixels = np.asarray(confusion.convert("L"), dtype=float)
    diagonal = np.mean([pixels[56 + 44 * k + 22, 60 + 44 * k + 5] for k in range(10)])
    off = np.mean([pixels[56 + 44 * k + 22, 60 + 44 * ((k + 5) % 10) + 5] for k in range(10)])
    assert run.final_test_accuracy > 0.8 and diagonal < off


@pytest.mark.parametrize("option, path", [("--csv", "/proc/x.csv"), ("--csv", "folder.csv"),
                                          ("--history", "/proc/x.parquet")])
def test_compare_refuses_outputs_it_cannot_write(project, option, path, monkeypatch, capsys):
    (project / "folder.csv").mkdir(exist_ok=True)
    before = sorted(p.name for p in project.iterdir())
    monkeypatch.chdir(project)
    argv = ["compare", "look.yaml", "--csv", "ok.csv", option, path] if option == "--history" \
        else ["compare", "look.yaml", option, path]
    assert runner.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0] and "cannot write" in err[0]
    assert sorted(p.name for p in project.iterdir()) == before  # not even ok.csv
