"""Your own model: a task file (network, and optionally loss, keys and to_input) gets the
whole runner; the seed's MLP is the built-in task and keeps its bits."""

from __future__ import annotations

import os

import pytest

import runner
from experiments.core import config as cfg
from experiments.core import task as tasks
from experiments.core import task_checks as checks
from experiments.core.autodiff import weights_digest
from experiments.core.hooks import Diverged
from experiments.core.train import fit, trainer_for
from helpers import SMALL_CNN, run_cli, store_client, write_task

# Recorded from the landed runner (caad140) before tasks existed: seed 3, 2 epochs.
SEED_BITS = {
    (64, 0.01): ([2.174215805053711, 1.7411776628494262],
                 [1.9983065185546875, 1.442432861328125], [0.727, 0.775], "98c72fb9d0ea7861"),
    (100, 0.2): ([1.0350029438734054, 0.3534207407385111],
                 [0.410796875, 0.3202923278808594], [0.884, 0.902], "ba8a26bc82d974f4"),
}
NO_AUX_DIVERGED = {64: "loss became nan at epoch 1, step 5",
                   100: "loss became nan at epoch 1, step 4"}


# The stop_gradient graphs compile apart (11 s): the slow tier holds their bits.
@pytest.mark.parametrize("mode", ["has_aux", pytest.param("stop_gradient",
                                                          marks=pytest.mark.slow)])
@pytest.mark.parametrize("batch_size,learning_rate", list(SEED_BITS))
def test_the_built_in_task_trains_the_landed_bits(prepared, mode, batch_size, learning_rate):
    config = cfg.build({"epochs": 2, "seed": 3, "grad_mode": mode, "batch_size": batch_size,
                        "learning_rate": learning_rate, "task": "mlp", "optimizer": "sgd",
                        "momentum": 0, "weight_decay": 0})
    trainer = trainer_for(config)
    history = fit(config, prepared, trainer).history
    train, test, accuracy, digest = SEED_BITS[(batch_size, learning_rate)]
    assert [r.train_loss for r in history] == train
    assert [r.test_loss for r in history] == test
    assert [r.test_accuracy for r in history] == accuracy
    assert weights_digest(trainer.weights()) == digest


@pytest.mark.parametrize("batch_size", [pytest.param(64, marks=pytest.mark.slow), 100])
def test_the_built_in_task_diverges_where_it_did(prepared, batch_size):
    lr = {64: 0.01, 100: 0.2}[batch_size]
    config = cfg.build({"epochs": 2, "seed": 3, "grad_mode": "no_aux",
                        "batch_size": batch_size, "learning_rate": lr})
    with pytest.raises(Diverged, match=NO_AUX_DIVERGED[batch_size]):
        fit(config, prepared, trainer_for(config))


def test_train_records_the_landed_bits_and_the_task(store):
    assert runner.main(["train", "--set", "epochs=2", "--set", "seed=3"]) == 0
    client = store_client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    train, _, accuracy, _ = SEED_BITS[(64, 0.01)]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")] == \
        pytest.approx(train, rel=0, abs=0)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "test_accuracy")] \
        == accuracy
    assert run.data.params["task"] == "mlp"
    assert run.data.params["optimizer"] == "sgd"
    assert run.data.tags["task.digest"] == tasks.locate("mlp").digest


@pytest.mark.slow  # five trainers compile: 20 s
def test_optimizer_keys_train_and_their_defaults_are_the_seeds(prepared):
    base = cfg.build({"epochs": 1, "learning_rate": 0.05})
    digests = {}
    for name, extra in [("default", {}), ("sgd", {"optimizer": "sgd", "momentum": 0.0}),
                        ("momentum", {"optimizer": "momentum", "momentum": 0.9}),
                        ("adam", {"optimizer": "adam", "learning_rate": 0.001}),
                        ("decay", {"weight_decay": 0.01})]:
        config = cfg.build(extra, base)
        trainer = trainer_for(config)
        history = fit(config, prepared, trainer).history
        assert history[0].test_accuracy > 0.5, name
        digests[name] = weights_digest(trainer.weights())
    assert digests["sgd"] == digests["default"]
    assert len(set(digests.values())) == 4  # momentum, adam and decay each train otherwise


def test_adam_takes_no_momentum():
    with pytest.raises(cfg.ConfigError, match="adam has no momentum"):
        cfg.build({"optimizer": "adam", "momentum": 0.9})


@pytest.mark.slow  # a CNN compiles and trains: 11 s
def test_a_network_with_dropout_is_found_random_and_said_so(store, capsys):
    """MindSpore's CPU dropout kernels do not repeat their draws for a seed (docs/tasks.md):
    such a task is found out before it trains, said to be so, and its runs are tagged."""
    write_task(store)
    assert runner.main(["train", "--set", "task=cnn.py", "--set", "epochs=1"]) == 0
    assert "the network draws random numbers as it trains (dropout)" in \
        capsys.readouterr().err
    client = store_client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.data.tags["task.random"] == "true"
    assert run.data.params["model.dropout"] == "0.2"
    without = SMALL_CNN.replace("self.drop = nn.Dropout(p=dropout)", "self.drop = nn.Identity()")
    file = tasks.locate(str(write_task(store, without, "steady.py")))
    import numpy as np

    digits = np.zeros((2, 1, 28, 28), np.float32)
    assert not checks.check(tasks.load(file), file.complete(cfg.build({"task": "steady.py"})),
                           digits, 10).random


NETWORK_OK = ("from mindspore import nn\n\ndef network(config):\n"
              "    return nn.SequentialCell(nn.Flatten(), nn.Dense(784, {out}))\n")
BAD_DATA = "import numpy as np\nfrom mindspore import nn\ndef network(config):\n" \
           "    return nn.Dense(2, 3)\ndef data(config):\n"
BAD_TASKS = [
    ("missing.py", None, "no such file"),
    ("notes.txt", "x = 1\n", "expected mlp, lenet or the path of a .py file"),
    ("syntax.py", "def network(config)\n    return 1\n", "line 1: syntax error"),
    ("nonet.py", "def model(config):\n    return None\n", "defines no function network"),
    ("keys.py", "import os\nkeys = {'w': os.cpu_count()}\ndef network(config):\n    pass\n",
     "`keys` must be a literal dict"),
    ("nodefault.py", "keys = {'w': None}\ndef network(config):\n    pass\n",
     "keys: w: has no usable default"),
    ("bounds.py", "keys = {'w': (100, 1, 10)}\ndef network(config):\n    pass\n",
     "must lie between low 1 and high 10"),
    ("imports.py", "import no_such_module_here\ndef network(config):\n    pass\n",
     "importing it raised ModuleNotFoundError"),
    ("raises.py", "def network(config):\n    raise ValueError('width too small')\n",
     "network(config) raised ValueError: width too small"),
    ("notcell.py", "def network(config):\n    return 3\n", "must return a mindspore.nn.Cell"),
    ("classes.py", NETWORK_OK.format(out=12), "logits have shape (2, 12) for 2 inputs; "
                                              "expected (2, 10)"),
    ("shape.py", "from mindspore import nn\ndef network(config):\n    return nn.Dense(100, 10)\n",
     "the network fails on a batch of shape (2, 1, 28, 28)"),
    ("loss.py", NETWORK_OK.format(out=10) + "def loss(logits, labels):\n    return logits\n",
     "loss(logits, labels) must return a finite scalar"),
    ("float64.py", BAD_DATA + "    x = np.zeros((4, 2))\n    return x, np.arange(4) % 3, x, "
                              "np.arange(4) % 3\n",
     "data(config): train_x is float64; the network trains on float32"),
    ("labels.py", BAD_DATA + "    x = np.zeros((4, 2), np.float32)\n    return x, x[:, 0], x, "
                             "x[:, 0]\n",
     "data(config): train_y must be integer class labels of shape (N,), got float32"),
    ("lengths.py", BAD_DATA + "    x = np.zeros((4, 2), np.float32)\n    return x, "
                              "np.arange(3), x, np.arange(4) % 3\n",
     "data(config): 4 train inputs but 3 labels"),
    ("nan.py", BAD_DATA + "    x = np.full((4, 2), np.nan, np.float32)\n    return x, "
                          "np.arange(4) % 3, x, np.arange(4) % 3\n",
     "data(config): train_x holds NaN or infinite values"),
    ("shapes.py", BAD_DATA + "    x = np.zeros((4, 2), np.float32)\n    return x, "
                             "np.arange(4) % 3, x[:, :1], np.arange(4) % 3\n",
     "data(config): train inputs are (2,) each, test inputs (1,)"),
    ("datafails.py", BAD_DATA + "    raise OSError('no such folder: /data')\n",
     "data(config) raised OSError: no such folder: /data"),
    ("datatype.py", BAD_DATA + "    return 'all of it'\n",
     "data(config): expected a dict with train_x, train_y, test_x, test_y"),
    ("testclass.py", BAD_DATA + "    x = np.zeros((4, 2), np.float32)\n    return x, "
                                "np.arange(4) % 3, x, np.array([0, 1, 2, 5])\n",
     "logits have shape (2, 3) for 2 inputs; expected (2, 6)"),
    ("manyclasses.py", BAD_DATA + "    x = np.zeros((4, 2), np.float32)\n    return x, "
                                  "np.array([0, 1, 2, 10**6]), x, np.arange(4) % 3\n",
     "train_y holds a label outside 0..99999"),
    ("classes3.py", BAD_DATA.replace("nn.Dense(2, 3)", "nn.Dense(2, 10)")
     + "    x = np.zeros((4, 2), np.float32)\n    return x, np.arange(4) % 3, x, "
       "np.arange(4) % 3\n", "logits have shape (2, 10) for 2 inputs; expected (2, 3)"),
]


@pytest.mark.parametrize("name,text,message", BAD_TASKS, ids=[t[0] for t in BAD_TASKS])
def test_a_bad_task_is_one_line_exit_2_and_writes_nothing(store, capsys, name, text, message):
    if text is not None:
        (store / name).write_text(text)
    assert runner.main(["train", "--set", f"task={name}", "--set", "epochs=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if not line.startswith(("data:", "WARNING"))]
    assert len(lines) == 1, err
    assert name in lines[0] and message in lines[0], lines[0]
    assert "Traceback" not in "\n".join(err)
    assert not (store / "mlruns").exists()


@pytest.mark.parametrize("sets,message", [
    (["model.width=3"], "task cnn.py has no key 'width'; its keys: model.channels, "
                        "model.dropout"),
    (["model.channels=40"], "model.channels' (cnn.py): expected an integer from 2 to 16, "
                            "got 40"),
    (["model.channels=2.5"], "expected an integer from 2 to 16, got 2.5"),
])
def test_a_bad_task_key_is_one_line_exit_2(store, capsys, sets, message):
    write_task(store)
    argv = ["train", "--set", "task=cnn.py"] + [x for s in sets for x in ("--set", s)]
    assert runner.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (store / "mlruns").exists()


SWEEP = """
name: mine
method: tpe
n_trials: 2
pruner: {{type: none}}
fixed: {{task: cnn.py, epochs: 1}}
parameters:
{parameters}
"""


@pytest.mark.parametrize("parameters,message", [
    ("  task: {values: [mlp, cnn.py]}", "parameters.task: a sweep trains one task"),
    ("  model.width: {values: [1, 2]}", "parameters.model.width: task cnn.py has no key "
                                        "'width'"),
    ("  model.channels: {min: 2.0, max: 8.0}", "parameters.model.channels.distribution: "
                                               "model.channels is an integer"),
    ("  model.channels: {values: [4, 64]}", "parameters.model.channels: the law can give 64; "
                                            "model.channels takes an integer from 2 to 16"),
    ("  model.dropout: {distribution: normal, mu: 0.2, sigma: 0.1}",
     "parameters.model.dropout: normal is unbounded; model.dropout takes a number from 0 "
     "to 0.9: use a bounded law"),
])
def test_a_sweep_over_a_tasks_keys_is_checked_before_any_trial(store, capsys, parameters,
                                                               message):
    write_task(store)
    (store / "mine.yaml").write_text(SWEEP.format(parameters=parameters))
    assert runner.main(["sweep", "mine.yaml"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (store / "mlruns").exists()


def test_a_fixed_task_key_is_told_with_the_sweep_file(store, capsys):
    write_task(store)
    (store / "mine.yaml").write_text(SWEEP.replace("epochs: 1}", "epochs: 1, model.channels: "
                                                   "3.5}").format(parameters="  learning_rate:"
                                                                  " {values: [0.1]}"))
    assert runner.main(["sweep", "mine.yaml"]) == 2
    assert "mine.yaml: fixed: config key 'model.channels' (cnn.py): expected an integer from " \
           "2 to 16, got 3.5" in capsys.readouterr().err


def test_a_sweep_names_a_missing_task_file(store, capsys):
    (store / "mine.yaml").write_text(SWEEP.format(parameters="  learning_rate: {values: [0.1]}"))
    assert runner.main(["sweep", "mine.yaml"]) == 2
    err = capsys.readouterr().err
    assert "mine.yaml: fixed.task: task file 'cnn.py': no such file" in err, err


def test_a_task_path_is_read_from_the_current_directory_not_the_sweep_files(
        store, capsys, tmp_path_factory):
    """A sweep file cannot pull code in from its own folder without the user naming it."""
    elsewhere = tmp_path_factory.mktemp("downloaded")
    write_task(elsewhere)
    (elsewhere / "mine.yaml").write_text(
        SWEEP.format(parameters="  learning_rate: {values: [0.1]}"))
    assert runner.main(["sweep", str(elsewhere / "mine.yaml"), "--dry-run"]) == 2
    assert "task file 'cnn.py': no such file" in capsys.readouterr().err


def test_the_dry_run_names_the_task_and_its_keys(store, capsys):
    write_task(store)
    (store / "mine.yaml").write_text(SWEEP.format(parameters="  model.channels: {values: "
                                                             "[2, 4]}"))
    assert runner.main(["sweep", "mine.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    digest = tasks.locate(str(store / "cnn.py")).digest
    assert f"task: cnn.py ({store / 'cnn.py'}, digest {digest}); its keys: model.channels = 4 " \
           "(an integer from 2 to 16), model.dropout = 0.2 (a number from 0 to 0.9)" in out
    assert not (store / "mlruns").exists()


def test_a_fifo_is_not_read_as_a_task(store, capsys):
    import os

    os.mkfifo(store / "pipe.py")
    assert runner.main(["train", "--set", "task=pipe.py"]) == 2
    assert "task file 'pipe.py': not a regular file" in capsys.readouterr().err


@pytest.mark.slow
def test_a_changed_task_file_is_another_question_and_the_folder_shadows_nothing(store):
    """Resuming after the task file changed is refused unless --allow-change; a `json.py`
    or `copy.py` in the current folder is neither imported in place of Python's nor run."""
    (store / "json.py").write_text("raise SystemExit(7)\n")
    (store / "copy.py").write_text("raise SystemExit(8)\n")
    write_task(store, NETWORK_OK.format(out=10), "net.py")
    (store / "mine.yaml").write_text(SWEEP.replace("cnn.py", "net.py").format(
        parameters="  learning_rate: {values: [0.1]}").replace("n_trials: 2", "n_trials: 1"))
    first = run_cli("sweep", "mine.yaml", cwd=store)
    assert first.returncode == 0, first.stderr[-2000:]
    (store / "net.py").write_text(NETWORK_OK.format(out=10) + "# another network\n")
    again = run_cli("sweep", "mine.yaml", "--n-trials", "2", cwd=store)
    assert again.returncode == 2 and "task file: digest" in again.stderr, again.stderr[-2000:]
    allowed = run_cli("sweep", "mine.yaml", "--n-trials", "2", "--allow-change", cwd=store)
    assert allowed.returncode == 0, allowed.stderr[-2000:]


@pytest.mark.slow
def test_a_network_that_exits_is_no_verdict_and_ctrl_c_in_the_check_is_an_interruption(
        store):
    import signal
    import subprocess
    import time

    from helpers import start

    (store / "exits.py").write_text("import os\ndef network(config):\n    os._exit(0)\n")
    (store / "mine.yaml").write_text(SWEEP.replace("cnn.py", "exits.py").format(
        parameters="  learning_rate: {values: [0.1]}"))
    done = run_cli("sweep", "mine.yaml", cwd=store)
    assert done.returncode == 2 and "no verdict" in done.stderr.strip().splitlines()[-1], \
        done.stderr[-2000:]
    assert not (store / "mlruns").exists()
    (store / "exits.py").write_text("import time\nfrom mindspore import nn\n"
                                    "def network(config):\n    time.sleep(30)\n")
    proc = start("sweep", "mine.yaml", cwd=store, group=True)
    time.sleep(8)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130, proc.stderr.read() if proc.stderr else ""
    assert not (store / "mlruns").exists()


@pytest.mark.slow
def test_a_sweep_checks_the_network_before_any_trial(store):
    (store / "classes.py").write_text(NETWORK_OK.format(out=12))
    (store / "mine.yaml").write_text(SWEEP.replace("cnn.py", "classes.py").format(
        parameters="  learning_rate: {values: [0.1]}"))
    done = run_cli("sweep", "mine.yaml", cwd=store)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "classes.py" in last and "expected (2, 10)" in last and "Traceback" not in done.stderr
    assert not (store / "mlruns").exists()


def test_the_readmes_smallest_task_trains(store, prepared):
    """The README's smallest task, as shown: a network function, nothing else."""
    from helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    text = readme.split("```python\n# my_mlp.py\n", 1)[1].split("```", 1)[0]
    file = tasks.locate(str(write_task(store, text, "my_mlp.py")))
    assert file.keys == () and file.defines == {"network"}
    config = file.complete(cfg.build({"task": str(file.path), "epochs": 1,
                                      "learning_rate": 0.1}))
    task = checks.check(tasks.load(file), config, prepared.test_x, 10)
    assert not task.random
    assert fit(config, prepared, trainer_for(config, task)).history[0].test_accuracy > 0.7
