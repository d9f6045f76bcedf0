"""Scale up and out: devices per worker, infrastructure failures that never burn the
budget, and the storage proxy; on real MindSpore, MLflow, Optuna and PostgreSQL."""

import contextlib
import os
import subprocess
import sys

import pytest
from test_sweep import TINY, journal_study, sweep_runs

from conftest import ROOT, mlflow_client


def cli(*args, cwd, env=None, timeout=600):
    full = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                            "RUNNER_FAULT")}
    return subprocess.run([sys.executable, str(ROOT / "runner.py"), *args], cwd=cwd,
                          env=full | (env or {}), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("device", ["GPU", "Ascend"])
@pytest.mark.parametrize("command", ["train", "sweep", "dry-run"])
def test_a_device_this_machine_lacks_is_one_line_exit_2(tmp_path, device, command):
    args = {"train": ["train"], "sweep": ["sweep", str(TINY)],
            "dry-run": ["sweep", str(TINY), "--dry-run"]}[command]
    proc = cli(*args, "--set", f"device={device}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: device {device} (device_id 0): MindSpore cannot use "
                               f"it on this machine: Unsupported device target {device}")
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "MNIST_Data").exists()


@pytest.mark.parametrize("args,problem", [
    (["--devices", "0,0"], "--devices 0,0: an id is given twice"),
    (["--devices", "a,b"], "--devices: expected device ids from 0 to 4095"),
    (["--devices", ""], "--devices: expected device ids"),
    (["--devices", "0,1", "--workers", "3"], "--workers 3 with --devices 0,1: one worker per"),
    (["--devices", "0,1", "--set", "device_id=2"], "--devices and device_id"),
    (["--set", "device=cpu"], "'device': expected one of CPU, GPU, Ascend, got 'cpu'"),
    (["--set", "device_id=-1"], "device_id"),
])
def test_bad_device_flags_are_one_line_exit_2(tmp_path, args, problem):
    proc = cli("sweep", str(TINY), *args, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert problem in proc.stderr and not (tmp_path / "mlruns").exists()


def test_a_device_is_not_searched(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY.read_text().replace(
        "parameters:\n", "parameters:\n  device_id: {values: [0, 1]}\n"))
    proc = cli("sweep", str(path), cwd=tmp_path)
    assert proc.returncode == 2 and "parameters.device_id: where trials run is not searched" \
        in proc.stderr


def test_devices_give_one_worker_per_device_id(tmp_path):
    proc = cli("sweep", str(TINY), "--devices", "0,1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _, _, children = sweep_runs(tmp_path, "tiny")
    by_worker = {}
    for r in children:
        assert r.data.params["device"] == "CPU"
        by_worker.setdefault(r.data.tags["worker"], set()).add(r.data.params["device_id"])
    # Two workers, each recording its own device id on every run it trained.
    assert sorted(by_worker.values(), key=sorted) == [{"0"}, {"1"}]
    trials = journal_study(tmp_path, "tiny").get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    # A rerun on other devices continues the same study: where is not what.
    again = cli("sweep", str(TINY), "--devices", "3", "--n-trials", "5", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    runs = mlflow_client(tmp_path).search_runs(
        [mlflow_client(tmp_path).get_experiment_by_name("tiny").experiment_id],
        "tags.trial = '4'")
    assert [r.data.params["device_id"] for r in runs] == ["3"]


# --- infrastructure failures ------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """mlruns/ on a 3 MB tmpfs: the tracking store, its artifacts and the journal fill it
    in the first trial (a logged model is 2.9 MB). Needs root (CI runs as root)."""
    mlruns = tmp_path / "mlruns"
    mlruns.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mlruns)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mlruns
    subprocess.run(["umount", "-l", str(mlruns)], check=False)


def test_a_full_disk_stops_in_one_line_and_costs_no_budget(tmp_path, small_disk):
    first = cli("sweep", str(TINY), cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    errors = [line for line in first.stderr.splitlines() if not line.startswith("data:")]
    assert len(errors) == 1 and "Traceback" not in first.stderr, first.stderr[-3000:]
    assert errors[0].startswith("error: disk full (OSError: [Errno 28] No space left on "
                                "device)") and "rerun the same command" in errors[0]
    study = journal_study(tmp_path, "tiny")  # the journal is whole: every line reads
    counted = [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")
               or "fail_reason" in t.user_attrs]
    assert not [t for t in counted if "space" in str(t.user_attrs.get("fail_reason", ""))]
    # Space freed: the same command completes the full budget.
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    again = cli("sweep", str(TINY), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = journal_study(tmp_path, "tiny").get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and "4/4 trials counted" in again.stdout
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed and all(t.user_attrs.get("fail_kind") in ("infrastructure", "crashed")
                          for t in failed)
    assert all("fail_reason" not in t.user_attrs for t in failed)
    _, parents, children = sweep_runs(tmp_path, "tiny")
    assert parents[0].info.status == "FINISHED"
    assert not [r for r in children if r.info.status == "RUNNING"]


def test_the_journal_takes_whole_lines_or_none(tmp_path, small_disk):
    """Optuna's own append left half a line on a full disk, and the journal unreadable."""
    import optuna

    from experiments.search.storage import WholeLines

    path = small_disk / "journal.log"
    storage = optuna.storages.JournalStorage(WholeLines(str(path)))
    study = optuna.create_study(study_name="s", storage=storage)
    filler = small_disk / "filler"  # fill the disk to its last byte
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"x" * 4096)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"x")
    os.close(fd)
    with pytest.raises(OSError):
        study.set_user_attr("big", "y" * 200_000)
    filler.unlink()
    study.set_user_attr("after", 1)  # appends again once there is room
    again = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path))))
    assert again.user_attrs == {"after": 1}
