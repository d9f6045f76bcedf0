"""Devices: `device` and `device_id`, `--devices IDS` for one worker per device, and a
device this machine lacks refused in one line before anything is written."""

import pytest

from helpers import TINY, journal_study, mlflow_client, run_with_env, sweep_runs


# One case in the fast tier; each starts a process that imports MindSpore (~4 s).
@pytest.mark.parametrize("device, command", [("GPU", "train"), *(
    pytest.param(d, c, marks=pytest.mark.slow) for d, c in (
        ("Ascend", "train"), ("GPU", "sweep"), ("Ascend", "sweep"), ("GPU", "dry-run"),
        ("Ascend", "dry-run")))])
def test_a_device_this_machine_lacks_is_one_line_exit_2(tmp_path, device, command):
    args = {"train": ["train"], "sweep": ["sweep", str(TINY)],
            "dry-run": ["sweep", str(TINY), "--dry-run"]}[command]
    proc = run_with_env(*args, "--set", f"device={device}", cwd=tmp_path)
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
    (["--devices", "²"], "--devices: expected device ids"),  # isdigit() says yes; int() no
])
def test_bad_device_flags_are_one_line_exit_2(tmp_path, args, problem):
    proc = run_with_env("sweep", str(TINY), *args, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert problem in proc.stderr and not (tmp_path / "mlruns").exists()


def test_a_device_is_not_searched(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY.read_text().replace(
        "parameters:\n", "parameters:\n  device_id: {values: [0, 1]}\n"))
    proc = run_with_env("sweep", str(path), cwd=tmp_path)
    assert proc.returncode == 2 and "parameters.device_id: where trials run is not searched" \
        in proc.stderr


@pytest.mark.slow
def test_devices_give_one_worker_per_device_id(tmp_path):
    proc = run_with_env("sweep", str(TINY), "--devices", "0,1", cwd=tmp_path)
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
    again = run_with_env("sweep", str(TINY), "--devices", "3", "--n-trials", "5", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    runs = mlflow_client(tmp_path).search_runs(
        [mlflow_client(tmp_path).get_experiment_by_name("tiny").experiment_id],
        "tags.trial = '4'")
    assert [r.data.params["device_id"] for r in runs] == ["3"]

