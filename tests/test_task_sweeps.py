"""A task gets the whole runner, end to end: a user's CNN from a temporary folder, a task
with its own data, and the built-in LeNet-5, each swept, compared, predicted, replayed."""

from __future__ import annotations

import pytest

from experiments.core import task as tasks
from helpers import BLOBS, SMALL_CNN, run_cli, store_client, write_task

USER_SWEEP = """
name: mine
method: tpe
metric: {name: test_accuracy, goal: maximize}
n_trials: 4
seed: 1
pruner: {type: median, warmup_epochs: 1}
fixed: {task: cnn.py, epochs: 2, batch_size: 64}
parameters:
  learning_rate: {distribution: log_uniform_values, min: 0.02, max: 0.3}
  model.channels: {values: [2, 4]}
  model.dropout: {min: 0.0, max: 0.4}
repeats: 2
ablation: {grad_mode: [has_aux, stop_gradient]}
"""


@pytest.mark.slow
def test_a_users_cnn_gets_the_whole_runner(store, mnist):
    """From a temporary folder: swept with pruning, two workers, repeats and an ablation;
    compared in pandas; predicted from a PNG; replayed to the bit; and refused for replay
    once its file changed (unless --force)."""
    from PIL import Image

    from experiments.search import compare

    # Without dropout: a network that draws random numbers is not bit-reproducible here.
    write_task(store, SMALL_CNN.replace("nn.Dropout(p=dropout)", "nn.Identity()"))
    (store / "mine.yaml").write_text(USER_SWEEP)
    done = run_cli("sweep", "mine.yaml", "--workers", "2", cwd=store, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stop_gradient: 4 trials" in done.stdout and "identical to has_aux to the bit" \
        in done.stdout, done.stdout

    frame = compare.runs("mine.yaml", store=store / "mlruns")
    assert {"model.channels", "model.dropout", "learning_rate"} <= set(frame.columns)
    assert set(frame["grad_mode"]) == {"has_aux", "stop_gradient"}
    assert set(frame["task"]) == {"cnn.py"}
    assert (frame["result"].str.startswith("pruned")).any() or len(frame) == 4 * 2 * 2

    png = store / "seven.png"
    Image.fromarray(mnist.test_images[0]).save(png)
    predicted = run_cli("predict", "--model", "best:mine.yaml", str(png), cwd=store)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert "seven.png  digit" in predicted.stdout

    client = store_client(store)
    run = next(r for r in client.search_runs(
        [client.get_experiment_by_name("mine").experiment_id],
        "tags.role = 'objective' and attributes.status = 'FINISHED'"))
    assert run.data.tags["task.digest"] == tasks.locate(str(store / "cnn.py")).digest
    replayed = run_cli("replay", run.info.run_id, cwd=store)
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    assert "bit-identical" in replayed.stdout

    (store / "cnn.py").write_text((store / "cnn.py").read_text() + "# changed\n")
    refused = run_cli("replay", run.info.run_id, cwd=store)
    assert refused.returncode == 2 and "task.digest" in refused.stderr, refused.stderr
    forced = run_cli("replay", run.info.run_id, "--force", cwd=store)
    assert forced.returncode == 0 and "bit-identical" in forced.stdout, forced.stderr[-2000:]


OWN_DATA_SWEEP = """
name: blobs
method: tpe
n_trials: 4
seed: 0
pruner: {type: median, warmup_epochs: 1}
fixed: {task: blobs.py, epochs: 3}
parameters:
  learning_rate: {distribution: log_uniform_values, min: 0.01, max: 0.5}
  model.hidden: {values: [4, 32]}
ablation: {grad_mode: [has_aux, stop_gradient]}
"""


@pytest.mark.slow
def test_a_task_with_its_own_data_gets_the_whole_runner(store):
    """Its own arrays (three classes, 2-D points), two workers, the ablation, predict
    through its to_input, replay; the records name its data."""
    import numpy as np
    from PIL import Image

    write_task(store, BLOBS, "blobs.py")
    (store / "blobs.yaml").write_text(OWN_DATA_SWEEP)
    done = run_cli("sweep", "blobs.yaml", "--workers", "2", cwd=store, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "data: blobs from task file" in done.stderr
    assert "identical to has_aux to the bit in 4 of 4" in done.stdout, done.stdout
    client = store_client(store)
    runs = client.search_runs([client.get_experiment_by_name("blobs").experiment_id],
                              "attributes.status = 'FINISHED' and tags.role = 'objective'")
    best = max(runs, key=lambda r: r.data.metrics["test_accuracy"])
    assert best.data.metrics["test_accuracy"] > 0.85
    assert best.data.tags["data.source"].endswith("blobs.py")
    artifacts = {a.path for a in client.list_artifacts(best.info.run_id)}
    assert "confusion_matrix.png" in artifacts and "test_digits.png" not in artifacts
    Image.fromarray(np.full((9, 9), 200, np.uint8)).save(store / "bright.png")
    predicted = run_cli("predict", "--model", best.info.run_id, "bright.png", cwd=store)
    assert predicted.returncode == 0 and "bright.png  class" in predicted.stdout, \
        predicted.stderr[-2000:]
    replayed = run_cli("replay", best.info.run_id, cwd=store)
    assert replayed.returncode == 0 and "bit-identical" in replayed.stdout, \
        replayed.stderr[-2000:]


LENET_AGAIN = """
name: lenet_again
method: tpe
n_trials: 3
seed: 4
pruner: {type: none}
repeats: 2
warm_start: {from: lenet.yaml, top: 1}
fixed: {task: lenet, epochs: 1, batch_size: 64, optimizer: momentum}
parameters:
  learning_rate: {distribution: log_uniform_values, min: 0.003, max: 0.1}
  momentum: {values: [0.0, 0.9]}
  model.width: {values: [0.5, 1.0, 2.0]}
"""


@pytest.mark.slow
def test_lenet_sweeps_end_to_end_with_workers_repeats_and_a_warm_start(store):
    import shutil

    from helpers import ROOT

    shutil.copy(ROOT / "sweeps" / "lenet.yaml", store / "lenet.yaml")
    first = run_cli("sweep", "lenet.yaml", "--n-trials", "3", "--set", "epochs=1",
                    "--workers", "2", cwd=store, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "3/3 trials counted" in first.stdout
    (store / "again.yaml").write_text(LENET_AGAIN)
    again = run_cli("sweep", "again.yaml", "--set", "epochs=1", cwd=store, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(2 seeds)" in again.stdout
    client = store_client(store)
    runs = client.search_runs([client.get_experiment_by_name("lenet_again").experiment_id],
                              "tags.role = 'objective'")
    assert len(runs) == 3 * 2
    assert {r.data.params["task"] for r in runs} == {"lenet"}
    assert any("warm_start_from" in r.data.tags for r in runs)
