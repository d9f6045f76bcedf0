"""The sweep's parent run tells its story while the sweep runs and keeps the current
budget, its description fits, and its end says how the sweep ended."""

from __future__ import annotations

import fcntl
import itertools
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

import runner
from helpers import LIVE, NOISE, ROOT, TINY_SPACE, mlflow_client, run_cli, sweep_file, sweep_runs


def test_the_parent_run_keeps_the_current_budget(store):
    path = sweep_file(store, TINY_SPACE)
    assert runner.main(["sweep", path]) == 0
    assert runner.main(["sweep", path, "--n-trials", "2"]) == 0
    _, parents, _ = sweep_runs(store, "question")
    tags = parents[0].data.tags
    assert tags["sweep.n_trials"] == "2" and tags["sweep.pruner"].startswith("none")
    assert "n_trials" not in parents[0].data.params


@pytest.mark.slow
def test_the_parent_run_tells_the_story_while_two_workers_run(tmp_path):
    (tmp_path / "live.yaml").write_text(LIVE)
    out = tmp_path / "sweep.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen([sys.executable, str(ROOT / "runner.py"), "sweep", "live.yaml",
                                 "--workers", "2"], cwd=tmp_path, stdout=sink,
                                stderr=subprocess.STDOUT)
    seen, status_running = [], None
    try:
        end = time.time() + 600
        while proc.poll() is None and time.time() < end:
            parent = parent_of(tmp_path, "live")
            if parent is not None:
                m = parent.data.metrics
                if "trials_complete" in m and proc.poll() is None:
                    seen.append((m["trials_complete"], m.get("best_test_accuracy"),
                                 m.get("trials_running"), parent.data.tags.get("best_run_id"),
                                 parent.data.tags.get("mlflow.note.content", "")))
                # Between two trials a worker runs none: ask again until one is running.
                if (status_running is None or "running: trial" not in status_running.stdout) \
                        and 1 <= m.get("trials_complete", 0) < 5:
                    status_running = run_cli("status", "live.yaml", cwd=tmp_path)
            time.sleep(0.5)
        assert proc.wait(timeout=60) == 0, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    # Before the end, the parent already showed progress: a best value and counts that grew.
    assert seen, "the parent run showed no progress while the sweep ran"
    during = [s for s in seen if 1 <= s[0] < 6]
    assert during and during[0][1] is not None and during[0][3], seen[:3]
    assert len({s[0] for s in seen}) >= 2, "the counts did not advance during the sweep"
    assert "of 6 trials counted" in during[0][4] and "| rank | trial |" in during[0][4]

    client = mlflow_client(tmp_path)
    parent = parent_of(tmp_path, "live")
    history = client.get_metric_history(parent.info.run_id, "best_test_accuracy")
    steps = sorted(h.step for h in history)
    assert steps[-1] == 6 and len(set(steps)) >= 3, steps  # step = trials counted
    best = [h.value for h in sorted(history, key=lambda h: (h.step, h.timestamp))]
    assert all(b >= a for a, b in itertools.pairwise(best)), best  # never worse
    assert parent.data.metrics["trials_complete"] == 6
    assert parent.data.metrics["trials_running"] == 0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.png" in artifacts

    # status while it ran: trials counted, someone running with worker, host and age.
    assert status_running is not None and status_running.returncode == 0, status_running
    text = status_running.stdout
    assert re.search(r"sweep 'live' .*: [1-5] of 6 trials counted, [1-5] left", text), text
    assert re.search(r"running: trial \d+ on \S+ pid \d+ \(alive\), started \d+s ago", text), \
        text
    assert "best so far: trial" in text and "ETA: about" in text and "/ 2 workers)" in text, \
        text
    # ... and after it: done.
    after = run_cli("status", "live.yaml", cwd=tmp_path)
    assert after.returncode == 0 and "6 of 6 trials counted, 0 left" in after.stdout
    assert "trials: 6 COMPLETE" in after.stdout and "ETA: done" in after.stdout, after.stdout

    # The terminal: one line per trial, a summary with the UI link, and no warnings.
    lines = out.read_text().splitlines()
    noise = [line for line in lines if NOISE.search(line)]
    assert not noise, noise
    assert sum(line.startswith("trial ") for line in lines) == 6, lines
    assert sum(line.startswith("data: ") for line in lines) == 1, lines  # not per worker
    assert any("workflowType=machine_learning&viewStateShareKey=runner-runs-" in line
               for line in lines), lines


def parent_of(folder: Path, experiment: str):
    """The sweep's parent run, or None before it exists (or before the store does)."""
    if not (folder / "mlruns" / "mlflow.db").exists():
        return None
    # As the runner's own readers do: under the store's lock, so that this client cannot
    # run MLflow's migrations on a store the sweep is still creating.
    with open(folder / "mlruns" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = mlflow_client(folder)
        client.search_experiments(max_results=1)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], "tags.`sweep.parent` = 'true'")
    return runs[0] if runs else None


def test_a_long_description_and_space_fit_in_the_note(tmp_path):
    """MLflow cuts a tag value over 8000 characters, with a warning at every update."""
    from optuna.distributions import CategoricalDistribution

    from experiments.search.runs import story
    from experiments.search.spec.sweepfile import load

    values = [round(0.001 * i, 3) for i in range(1, 1501)]
    (tmp_path / "big.yaml").write_text(
        f"name: big\nmethod: grid\ndescription: {'why ' * 1500}\n"
        f"parameters:\n  learning_rate: {{values: {values}}}\n")
    spec = load(str(tmp_path / "big.yaml"))
    dist = {"learning_rate": CategoricalDistribution(values)}
    done = [optuna.trial.create_trial(params={"learning_rate": v}, distributions=dist,
                                      value=0.5 + i / 100, user_attrs={"mlflow_run_id": "r"})
            for i, v in enumerate(values[:7])]
    for i, t in enumerate(done):
        t.number = i
    text = story.describe(spec, "1", done, {"complete": 7, "pruned": 0, "failed": 0,
                                           "running": 0}, 7, 1500)
    assert len(text) <= 8000
    assert "**Best so far: test_accuracy 0.5600**, trial 6" in text
    assert "| rank | trial |" in text and "[trial-6-run](#/experiments/1/runs/r)" in text
    assert "| 1 | 6 | 0.5600 | 0.007 |" in text, text[-800:]

