"""`runner.py replay RUN_ID`: a recorded run trained again gives the same bits, or says where
it does not; a run it cannot replay is one line, exit 2, and nothing written.

One `train` run and one small ablation sweep (has_aux, and no_aux, which diverges) are
recorded once for the module, in this process as the fast tests replay them. A test that
changes a run works on its own copy of the store's database.
"""

import contextlib
import io
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

import runner
from helpers import mlflow_client, run_cli

SWEEP = """
name: abl
method: grid
n_trials: 2
seed: 0
pruner: {type: none}
fixed: {epochs: 2, batch_size: 128, data.download: false}
parameters:
  learning_rate: {values: [0.05, 0.01]}
ablation: {grad_mode: [has_aux, no_aux]}
"""
SEEDS = """
name: seeds
method: grid
n_trials: 1
seed: 0
repeats: 2
pruner: {type: none}
fixed: {epochs: 1, batch_size: 128, data.download: false}
parameters:
  learning_rate: {values: [0.05]}
"""
TRAIN = ["train", "--set", "epochs=2", "--set", "data.download=false", "--experiment", "replay"]


def run_main(argv: list[str], folder: Path) -> tuple[int, str, str]:
    """runner.main in `folder`, as the command line runs it; (code, stdout, stderr)."""
    out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = runner.main(argv)
    finally:
        os.chdir(before)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("replay")
    (folder / "abl.yaml").write_text(SWEEP)
    (folder / "seeds.yaml").write_text(SEEDS)
    env = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        for argv in (TRAIN, ["sweep", "abl.yaml"], ["sweep", "seeds.yaml"]):
            code, _, err = run_main(argv, folder)
            assert code == 0, err
    finally:
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env
    client = mlflow_client(folder)
    runs = {}
    for name in ("replay", "abl", "seeds"):
        exp = client.get_experiment_by_name(name).experiment_id
        runs |= {r.info.run_name: r.info.run_id for r in client.search_runs([exp])}
    return folder, runs


@pytest.fixture
def own_store(project, tmp_path, monkeypatch):
    """A copy of the module's database in a folder of its own: the runs may be changed."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlruns").mkdir()
    shutil.copy(project[0] / "mlruns" / "mlflow.db", tmp_path / "mlruns" / "mlflow.db")
    return tmp_path, project[1]


def all_runs(folder: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(folder / "mlruns" / "mlflow.db")) as db:
        return sorted(row[0] for row in db.execute("select run_uuid from runs"))


def replays_of(folder: Path, run_id: str) -> list:
    client = mlflow_client(folder)
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.replay_of = '{run_id}'")


def assert_refused(code: int, out: str, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    return lines[0]


def test_a_train_run_replays_bit_identical(own_store):
    folder, runs = own_store
    original = runs["train-has_aux"]
    code, out, err = run_main(["replay", original], folder)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("epoch 1  identical  train_loss=")
    assert lines[1].startswith("epoch 2  identical  train_loss=")
    assert "test_loss=" in lines[1] and "test_accuracy=" in lines[1]
    assert lines[2].startswith("tags  identical  init_weights_digest=")
    assert any(line.startswith("timings are not compared (epoch_time_s") for line in lines)
    assert f"replay of {original}: bit-identical over 2 epochs (10 values) -> run " in lines[-1]
    (new,) = replays_of(folder, original)
    assert lines[-1].endswith(f"-> run {new.info.run_id} in experiment 'replay'")
    assert new.info.run_name == "replay-train-has_aux" and new.info.status == "FINISHED"
    tags = new.data.tags
    assert tags["replay.identical"] == "true"
    assert not {"sweep", "trial", "mlflow.parentRunId"} & set(tags)
    assert not any(k.startswith("replay.diff.") for k in tags)
    old = mlflow_client(folder).get_run(original)
    assert new.info.experiment_id == old.info.experiment_id
    assert new.data.params == old.data.params


def test_sweep_trials_replay_identical_and_a_divergence_diverges_again(own_store):
    folder, runs = own_store
    # The second trial: its process had trained the first one on the same trainer.
    code, out, err = run_main(["replay", runs["trial-1-has_aux"]], folder)
    assert code == 0, err
    assert "bit-identical over 2 epochs (10 values)" in out
    (new,) = replays_of(folder, runs["trial-1-has_aux"])
    assert new.info.run_name == "replay-trial-1-has_aux"
    assert not {"sweep", "trial", "role", "mlflow.parentRunId"} & set(new.data.tags)

    diverged = runs["trial-0-no_aux"]
    recorded = mlflow_client(folder).get_run(diverged).data.tags
    assert recorded["outcome"] == "diverged"
    code, out, err = run_main(["replay", diverged], folder)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("diverging_step_loss  identical  steps=1-")
    assert (f"diverged_epoch={recorded['diverged_epoch']} "
            f"diverged_step={recorded['diverged_step']}") in lines[1]
    assert (f"bit-identical up to the divergence at epoch {recorded['diverged_epoch']}, "
            f"step {recorded['diverged_step']}") in lines[-1]
    (new,) = replays_of(folder, diverged)
    # An ablation variant that diverges is a result, FINISHED; so is its replay.
    assert new.info.status == "FINISHED" and new.data.tags["grad_mode"] == "no_aux"


def test_a_replay_never_changes_what_a_sweeps_comparison_returns(own_store):
    """A replay goes into its run's experiment, beside it in the UI; it is no result of
    the sweep: `compare` (the CLI and pandas) leaves it out (it used to add a `trial <NA>`
    row that doubled a learning rate in a pivot)."""
    from experiments.search import compare

    folder, runs = own_store
    client = mlflow_client(folder)
    before = compare.runs("abl", client).drop(columns=["duration_s"])
    hist = compare.history("abl", client)
    code, _, err = run_main(["replay", runs["trial-1-has_aux"]], folder)
    assert code == 0, err
    assert replays_of(folder, runs["trial-1-has_aux"])
    after = compare.runs("abl", client).drop(columns=["duration_s"])
    assert after.equals(before)
    assert compare.history("abl", client).equals(hist)
    code, out_before, _ = run_main(["compare", "--experiment", "abl"], folder)
    assert code == 0 and "<NA>" not in out_before


def test_a_repeat_seed_replays_without_the_sweeps_mean_and_std(own_store):
    folder, runs = own_store
    (second,) = [i for name, i in runs.items() if name.startswith("trial-0-has_aux-seed")
                 and name != "trial-0-has_aux-seed0"]
    recorded = mlflow_client(folder).get_run(second).data
    assert recorded.params["seed"] != "0" and "test_accuracy_mean" in recorded.metrics
    code, out, err = run_main(["replay", second], folder)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("epoch 1  identical  train_loss=")
    assert "not compared: test_accuracy_mean, test_accuracy_std (the sweep's mean" in out
    assert "bit-identical over 1 epoch (5 values)" in lines[-1]


def test_changed_data_is_refused_and_forced_replays_with_the_difference_tagged(own_store):
    folder, runs = own_store
    original = runs["train-has_aux"]
    client = mlflow_client(folder)
    here = client.get_run(original).data.tags["data.digest"]
    client.set_tag(original, "data.digest", "0123456789abcdef")
    before = all_runs(folder)
    line = assert_refused(*run_main(["replay", original], folder))
    assert f"data.digest: 0123456789abcdef (recorded) -> {here} (here)" in line
    assert "--force" in line and original in line
    assert all_runs(folder) == before

    code, out, err = run_main(["replay", original, "--force"], folder)
    assert code == 0, err
    assert f"forced: data.digest: 0123456789abcdef (recorded) -> {here} (here)" in out
    (new,) = replays_of(folder, original)
    assert new.data.tags["replay.diff.data.digest"] == f"0123456789abcdef -> {here}"
    assert new.data.tags["replay.identical"] == "true"


def test_a_missing_version_tag_is_a_difference(own_store):
    folder, runs = own_store
    original = runs["trial-0-has_aux"]
    mlflow_client(folder).delete_tag(original, "versions.numpy")
    line = assert_refused(*run_main(["replay", original], folder))
    assert "versions.numpy: not recorded -> 1." in line


def test_a_changed_metric_makes_the_replay_differ_at_that_epoch(own_store):
    folder, runs = own_store
    original = runs["train-has_aux"]
    client = mlflow_client(folder)
    (point,) = [m for m in client.get_metric_history(original, "test_loss") if m.step == 2]
    client.log_metric(original, "test_loss", point.value + 1e-6, step=2)
    code, out, err = run_main(["replay", original], folder)
    assert code == runner.EXIT_NOT_IDENTICAL == 1, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("epoch 1  identical")
    assert lines[1].startswith(f"epoch 2  DIFFERS  test_loss: {point.value!r}, ")
    assert f"(recorded) vs {point.value!r} (replay)" in lines[1]
    assert f"replay of {original}: DIFFERS at epoch 2 over 2 epochs" in lines[-1]
    (new,) = replays_of(folder, original)
    assert new.data.tags["replay.identical"] == "false"


def test_what_is_not_a_training_run_is_refused_and_nothing_is_written(project, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder, runs = project
    before = all_runs(folder), sorted(p.name for p in (folder / "mlruns").rglob("*"))
    line = assert_refused(*run_main(["replay", runs["abl"]], folder))
    assert f"run {runs['abl']} (abl) is the parent run of sweep 'abl'" in line
    line = assert_refused(*run_main(["replay", "0123abcd"], folder))
    assert line == "error: no run '0123abcd' in the tracking store"
    assert (all_runs(folder), sorted(p.name for p in (folder / "mlruns").rglob("*"))) == before


def test_no_store_is_one_line_and_creates_none(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    line = assert_refused(*run_main(["replay", "0123abcd"], tmp_path))
    assert "no MLflow store here" in line
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    line = assert_refused(*run_main(["replay", "0123abcd"], tmp_path))
    assert "no MLflow store at sqlite:///" in line
    assert list(tmp_path.iterdir()) == []


def test_a_store_named_by_mlflow_tracking_uri_replays(own_store, monkeypatch, tmp_path):
    folder, runs = own_store
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    code, out, err = run_main(["replay", runs["trial-0-has_aux"]], elsewhere)
    assert code == 0, err
    assert "bit-identical over 2 epochs" in out
    assert list(elsewhere.iterdir()) == []  # nothing under the working folder


@pytest.mark.slow
def test_train_then_replay_as_a_user_runs_them(tmp_path):
    trained = run_cli(*TRAIN, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    run_id = trained.stderr.strip().splitlines()[-1].split()[1]
    replayed = run_cli("replay", run_id, cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert "Traceback" not in replayed.stderr
    assert "replay epoch 2/2" in replayed.stderr
    assert f"replay of {run_id}: bit-identical over 2 epochs" in replayed.stdout


@pytest.mark.slow
def test_one_blas_thread_replays_bit_identical(own_store):
    """grad_cosine and grad_norm_ratio are summed by NumPy, not BLAS: OpenBLAS's order
    follows its thread count, which made a process with one thread differ in the last
    bits (found by replay). Now a replay with one thread matches a run made with two."""
    folder, runs = own_store
    replayed = run_cli("replay", runs["train-has_aux"], cwd=folder,
                       env={"OPENBLAS_NUM_THREADS": "1"})
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "bit-identical" in replayed.stdout


def test_a_config_yaml_that_contradicts_the_run_is_refused(own_store):
    """An artifact edited after the run would replay another training and call the
    difference non-determinism: its params and config digest must agree with it."""
    folder, runs = own_store
    original = runs["train-has_aux"]
    client = mlflow_client(folder)
    config = client.download_artifacts(original, "config.yaml", str(folder))
    text = Path(config).read_text().replace("learning_rate: 0.01", "learning_rate: 0.02")
    assert "learning_rate: 0.02" in text
    client.log_text(original, text, "config.yaml")
    before = all_runs(folder)
    line = assert_refused(*run_main(["replay", original], folder))
    assert "its config.yaml does not match what the run recorded: learning_rate: 0.01 " \
           "(param) vs 0.02 (config.yaml)" in line
    assert all_runs(folder) == before


@pytest.mark.parametrize("content", [b"", b"not a database\n"])
def test_a_file_that_is_not_a_store_is_refused_and_left_alone(tmp_path, monkeypatch, content):
    db = tmp_path / "other.db"
    db.write_bytes(content)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    line = assert_refused(*run_main(["replay", "0123abcd"], tmp_path))
    assert "the file is not one (it has no MLflow tables)" in line
    assert db.read_bytes() == content  # MLflow would have written its schema into it


# The seed's MLP, from a task file that runs a kernel as it is read: oneDNN fixes its
# vector ISA at its first kernel, so a replay must cap it before reading the task.
KERNEL_AS_READ = """
import numpy as np
from mindspore import Tensor, nn, ops

from experiments.core.model import Network

a = Tensor(np.ones((64, 64), np.float32))
ops.matmul(a, a).asnumpy()
nn.Dense(64, 64)(a).asnumpy()


def network(config):
    return Network()
"""


def _trained(folder: Path, isa: str | None, *sets: str) -> str:
    """A `train` run made with the kernels capped at `isa` (None: the CPU's own); its id."""
    done = run_cli("train", "--set", "epochs=2", *sets, cwd=folder,
                   env={"DNNL_MAX_CPU_ISA": isa})
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow_client(folder)
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    return run.info.run_id


def _replayed(folder: Path, run_id: str, isa: str | None, **oneDNN: str | None):
    return run_cli("replay", run_id, cwd=folder, env={"DNNL_MAX_CPU_ISA": isa, **oneDNN})


@pytest.mark.slow
def test_a_run_replays_with_the_kernels_it_trained_with(tmp_path):
    """AVX-512 kernels round otherwise than AVX2's (measured: the seed's MLP's train loss at
    the 8th digit, every weight's last bits). A run records its kernels' ISA; a replay on a
    wider CPU caps its own at the run's, before the task file runs a kernel, and is
    bit-identical; one on a narrower CPU, or of a run that did not record it, says why its
    last bits may differ. Here the narrower machine is this one, capped."""
    cpu = Path("/proc/cpuinfo")
    if not cpu.exists() or "avx512f" not in cpu.read_text():
        pytest.skip("this CPU has no AVX-512: its kernels are the only ones it can run")
    narrow, wide = tmp_path / "narrow", tmp_path / "wide"
    narrow.mkdir()
    wide.mkdir()
    (narrow / "mine.py").write_text(KERNEL_AS_READ)
    run_id = _trained(narrow, "AVX2", "--set", "task=mine.py")
    client = mlflow_client(narrow)
    assert client.get_run(run_id).data.tags["cpu.isa"] == "avx2"
    # oneDNN obeys ONEDNN_MAX_CPU_ISA before DNNL_MAX_CPU_ISA: the replay sets both.
    replayed = _replayed(narrow, run_id, None, ONEDNN_MAX_CPU_ISA="AVX512_CORE")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "trained with avx2 kernels as the run was (this CPU has avx512_core)" in \
        replayed.stdout
    assert f"replay of {run_id}: bit-identical over 2 epochs" in replayed.stdout
    client.delete_tag(run_id, "cpu.isa")  # as a run made before runs recorded it
    replayed = _replayed(narrow, run_id, None)
    assert replayed.returncode == 1 and "DIFFERS" in replayed.stdout, replayed.stdout
    assert "the run did not record its kernels' vector ISA (cpu.isa): made with another, " \
           "its last bits may differ for that" in replayed.stdout

    # A cap oneDNN does not know is not a cap: the run records the CPU's own ISA.
    run_id = _trained(wide, "AVX2 ")
    assert mlflow_client(wide).get_run(run_id).data.tags["cpu.isa"] == "avx512_core"
    replayed = _replayed(wide, run_id, "AVX2")
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert "the run trained with avx512_core kernels, this process has avx2: they round " \
           "differently, so its last bits may differ for that" in replayed.stdout
    assert "DIFFERS" in replayed.stdout and "Traceback" not in replayed.stderr
