"""`runner.py ui`: MLflow's UI on the project's store, its links landing on the sweep in
a real (headless) Chromium."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import ARTIFACTS, ROOT, free_port, get_json, run_cli, wait_http


def test_ui_on_a_taken_port_is_exit_2_and_writes_nothing(tmp_path):

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("ui", "--port", str(port), cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result
    assert result.stderr.strip() == f"error: --port {port}: 127.0.0.1:{port} is in use " \
        "(another server?); choose another --port", result.stderr
    assert not (tmp_path / "mlruns").exists()


def test_ui_where_nothing_was_tracked_names_the_store_and_writes_nothing(tmp_path):
    """It used to create an empty store and say "no runs yet", naming no path."""
    result = run_cli("ui", "--port", str(free_port()), cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result
    store = tmp_path / "mlruns" / "mlflow.db"
    assert result.stderr.strip().splitlines() == [
        f"error: no MLflow store here ({store}): nothing has been tracked in this folder; "
        "run `runner.py sweep` or `train` here first, or set MLFLOW_TRACKING_URI"], result
    assert not (tmp_path / "mlruns").exists()


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
    assert names == ["trial-0-has_aux", "trial-0-no_aux", "trial-0-stop_gradient",
                     "trial-1-has_aux", "trial-1-no_aux", "trial-1-stop_gradient"]

    # First the links (the store named), then nothing else: MLflow's request log goes to
    # mlruns/ui.log.
    lines = out.read_text().splitlines()
    assert lines[0].startswith(f"MLflow UI at {base} on the store "
                               f"{project / 'mlruns' / 'mlflow.db'}"), lines
    (link,) = [line.split(": ", 1)[1] for line in lines if "(sweep 'look'):" in line]
    (by_mode,) = [line.split(": ", 1)[1] for line in lines
                  if "(sweep 'look', the ablation by grad mode):" in line]
    assert "workflowType=machine_learning" in link and len(lines) == 3, lines
    # Only what the UI needs: no job runner and task consumers (2.4 GB with them).
    assert tree_rss_mb(proc.pid) < 1024

    # The printed link opens the Model training view on the trial runs, best first, with
    # numbers on the first screen: the metric, the searched parameter, each run's result.
    text = chromium_page(link, project, "ui_runs_view.png")
    assert "Run Name" in text and "6 matching runs" in text, text[:2000]
    assert all(name in text for name in names), text[:2000]
    assert "Token Usage" not in text and "Latency" not in text  # not GenAI's overview
    assert "test_accuracy learning_rate result" in text or \
        "learning_rate test_accuracy result" in text, text[:3000]
    assert re.search(r" 0\.2 ", text) and re.search(r" 0\.\d{2,4} ", text), text[:3000]
    assert " complete " in text and "diverged at epoch 1, step " in text, text[:3000]

    # The ablation's link: the runs grouped by grad mode, all three, the divergence said.
    text = chromium_page(by_mode, project, "ui_ablation_view.png")
    for mode in ("has_aux", "no_aux", "stop_gradient"):
        assert f"Group: {mode} 2" in text, text[:3000]
    assert "diverged at epoch 1" in text and "same bits as the objective" in text

    # The parent run's page: the ablation's verdict first, then the best, top trials
    # linked by name.
    page = f"{base}/#/experiments/{exp['experiment_id']}/runs/{parent_id}"
    text = chromium_page(page + "?workflowType=machine_learning", project,
                         "ui_parent_run.png")
    assert "Sweep look : maximize test_accuracy ablation (same seed, weights and batches " \
        "per trial; has_aux is the objective):" in text, text[:3000]
    assert re.search(r"no_aux: 2 trials, diverged in 2 of 2 \(at epoch 1, steps? [\d-]+\)",
                     text), text[:3000]
    assert "stop_gradient: 2 trials, mean test_accuracy 0." in text
    assert "identical to has_aux to the bit in 2 of 2 paired trials" in text
    assert "Best so far: test_accuracy 0." in text, text[:3000]
    assert "2 of 2 trials counted" in text and "rank trial test_accuracy" in text, text[:3000]
    best = get_json(f"{api}/runs/get?run_id={parent_id}")["run"]["data"]["tags"]
    best_id = next(t["value"] for t in best if t["key"] == "best_run_id")
    best_name = next(t["mlflow.runName"] for r, t in zip(found, tags, strict=True)
                     if r["info"]["run_id"] == best_id)
    assert "rank trial test_accuracy learning_rate run 1 " in text
    assert text.split("rank trial test_accuracy learning_rate run 1 ")[1].split()[3] == \
        best_name

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



def test_every_view_of_a_sweep_shows_its_own_runs_only():
    """A view written while a sweep was alone in its experiment showed another sweep's runs
    once that one joined (a shared W&B project)."""
    from experiments.search.runs.parent import ui_views
    from experiments.search.spec import sweepfile

    spec = sweepfile.load(ROOT / "sweeps" / "has_aux_ablation.yaml")
    found = ui_views(spec)
    assert len(found) == 2 and all(key.startswith("runner-") for key in found)
    for state in found.values():
        assert state["searchFilter"] == "tags.role LIKE '%' and tags.sweep = 'has_aux_ablation'"
        assert state["orderByKey"] == "metrics.`test_accuracy`" and not state["orderByAsc"]
        assert state["selectedColumns"] == ["metrics.`test_accuracy`", "params.`learning_rate`",
                                            "tags.`result`"]
    assert [s.get("groupBy") is not None for s in found.values()] == [False, True]
