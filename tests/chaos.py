"""The chaos test: a two-worker sweep hit at a random moment by what a hostile user or a
hostile machine does, then rerun until it ends; after each round the stores must tell the
truth.

    python -m tests.chaos --rounds 50            # many rounds by hand (seeded, printed)
    python -m tests.chaos --rounds 3 --seed 7    # tests/test_chaos.py runs a few in CI

A round: a fresh folder; `runner.py sweep` in its own process group (as a shell starts a
job); at a moment drawn from the round's seed, one fault: SIGINT to the group (Ctrl-C),
SIGTERM to the command, kill -9 of a worker, kill -9 of the command's group, its stdout and
stderr closed by their reader, or a second identical command started beside it. Then the
same command again until it exits 0 (at most MAX_RERUNS). The invariants, on the Optuna
journal and the MLflow store:
- the budget is counted exactly, and nothing is RUNNING (no trial, no run, no process);
- every trial has at most one FINISHED objective run that is a result (not state=FAIL);
- every KILLED run has a failure_reason, state=FAIL and a fail_kind;
- every counted trial's objective run is FINISHED with its metrics at every epoch;
- the parent run is FINISHED (end_reason budget) and its counts are Optuna's.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `helpers`, as pytest finds it

from helpers import journal_study, runner_argv, store_client, user_env

SWEEP = """
name: chaos
method: random
metric: {name: test_accuracy, goal: maximize}
n_trials: 6
seed: 0
pruner: {type: median, warmup_epochs: 0}
fixed: {epochs: 3, batch_size: 32, data.download: false}
parameters:
  learning_rate: {distribution: log_uniform_values, min: 1.0e-3, max: 0.3}
"""
BUDGET, EPOCHS = 6, 3
FAULTS = ("sigint-group", "sigterm", "kill-worker", "kill-group", "closed-output", "twin")
MAX_RERUNS = 3
EPOCH_METRICS = ("train_loss", "test_loss", "test_accuracy")


@dataclass
class Round:
    number: int
    fault: str
    at_s: float
    first_exit: int | None = None
    reruns: int = 0
    problems: tuple[str, ...] = ()

    def __str__(self) -> str:
        verdict = "ok" if not self.problems else "FAILED: " + "; ".join(self.problems)
        return (f"round {self.number}: {self.fault} at {self.at_s:.2f} s -> exit "
                f"{self.first_exit}; reruns {self.reruns}; {verdict}")


def _command(folder: Path, close_output: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen(runner_argv("sweep", "chaos.yaml", "--workers", "2"), cwd=folder,
                            env=user_env(RUNNER_WORKERS=None), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    if close_output:
        proc.stdout.readline()
        proc.stdout.close()  # the reader left after one line
    else:  # read as a terminal would, so the command never blocks on a full pipe
        threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc


def _workers_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # its parent
            out.append(int(entry.name))
    return out


def _hit(proc: subprocess.Popen, fault: str, rng: random.Random, folder: Path) -> list:
    """Apply the fault; returns other commands it started (a twin)."""
    if fault == "sigint-group":
        os.killpg(proc.pid, signal.SIGINT)
    elif fault == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif fault == "kill-worker":
        workers = _workers_of(proc.pid)
        if workers:
            os.kill(rng.choice(workers), signal.SIGKILL)
    elif fault == "kill-group":
        os.killpg(proc.pid, signal.SIGKILL)
    elif fault == "twin":
        return [_command(folder)]
    return []


def play(number: int, seed: int, root: Path) -> Round:
    rng = random.Random(seed * 1000 + number)
    fault, at_s = rng.choice(FAULTS), rng.uniform(0.3, 14.0)
    folder = Path(tempfile.mkdtemp(prefix=f"round{number}-", dir=root))
    (folder / "chaos.yaml").write_text(SWEEP)
    result = Round(number, fault, at_s)
    proc = _command(folder, close_output=fault == "closed-output")
    others: list[subprocess.Popen] = []
    deadline = time.monotonic() + at_s
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    if proc.poll() is None and fault != "closed-output":
        others = _hit(proc, fault, rng, folder)
    for p in (proc, *others):
        try:
            p.wait(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            result.problems += (f"a command did not end in 600 s (pid {p.pid})",)
    result.first_exit = proc.returncode
    _settle(proc.pid)
    code = None
    while code != 0 and result.reruns < MAX_RERUNS:
        result.reruns += 1
        again = _command(folder)
        code = again.wait(timeout=900)
    if code != 0:
        result.problems += (f"the rerun exited {code}",)
    result.problems += tuple(check(folder))
    return result


def _settle(pid: int, timeout: float = 60.0) -> None:
    """Workers orphaned by a kill -9 stop on their parent's death: wait for them."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(
            b"runner.py" in _cmdline(p) for p in _workers_of(1) + _workers_of(pid)):
        time.sleep(0.2)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def check(folder: Path) -> list[str]:
    """The invariants, as problems in words (none: the stores tell the truth)."""
    problems = []
    study = journal_study(folder, "chaos")
    trials = study.get_trials()
    counted = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")
               or (t.state.name == "FAIL" and "fail_reason" in t.user_attrs)]
    if len(counted) != BUDGET:
        problems.append(f"{len(counted)} trials counted, budget {BUDGET}")
    if [t for t in trials if t.state.name == "RUNNING"]:
        problems.append("a trial is RUNNING")
    client = store_client(folder)
    exp = client.get_experiment_by_name("chaos")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    children = [r for r in runs if r.data.tags.get("sweep.parent") != "true"]
    if [r for r in runs if r.info.status == "RUNNING"]:
        problems.append("a run is RUNNING: " + ", ".join(
            r.info.run_name for r in runs if r.info.status == "RUNNING"))
    results: dict[str, int] = {}
    for r in children:
        tags = r.data.tags
        if r.info.status == "FINISHED" and tags.get("role") == "objective" and \
                tags.get("state") != "FAIL":
            results[tags.get("trial", "?")] = results.get(tags.get("trial", "?"), 0) + 1
        if r.info.status == "KILLED" and not (tags.get("failure_reason") and
                                              tags.get("state") == "FAIL" and
                                              tags.get("fail_kind")):
            problems.append(f"run {r.info.run_name} KILLED without failure_reason, "
                            f"state=FAIL and fail_kind: {sorted(tags)}")
    problems += [f"trial {n} has {k} finished objective runs" for n, k in results.items()
                 if k > 1]
    for t in counted:
        if t.state.name == "FAIL":
            continue
        run_id = t.user_attrs.get("mlflow_run_id")
        run = next((r for r in children if r.info.run_id == run_id), None)
        if run is None or run.info.status != "FINISHED":
            problems.append(f"counted trial {t.number} has no FINISHED run")
            continue
        epochs = EPOCHS if t.state.name == "COMPLETE" else len(t.intermediate_values)
        for key in EPOCH_METRICS:
            steps = sorted(m.step for m in client.get_metric_history(run_id, key))
            if steps != list(range(1, epochs + 1)):
                problems.append(f"trial {t.number}: {key} at epochs {steps}")
    if len(parents) != 1:
        problems.append(f"{len(parents)} parent runs")
    else:
        parent = parents[0]
        if parent.info.status != "FINISHED" or parent.data.tags.get("end_reason") != "budget":
            problems.append(f"parent {parent.info.status} "
                            f"{parent.data.tags.get('end_reason')}")
        for state in ("complete", "pruned", "failed"):
            want = sum(t.state.name == {"complete": "COMPLETE", "pruned": "PRUNED",
                                        "failed": "FAIL"}[state] for t in counted)
            got = parent.data.metrics.get(f"trials_{state}")
            if got != want:
                problems.append(f"parent says trials_{state}={got}, Optuna {want}")
    stray = [p for p in _workers_of(1) if b"runner.py" in _cmdline(p)]
    if stray:
        problems.append(f"processes left: {stray}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", default=None, help="where the rounds' folders go")
    args = parser.parse_args(argv)
    root = Path(args.folder or tempfile.mkdtemp(prefix="chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"chaos: {args.rounds} rounds, seed {args.seed}, folders in {root}", flush=True)
    failed = 0
    for number in range(args.rounds):
        result = play(number, args.seed, root)
        failed += bool(result.problems)
        print(result, flush=True)
    print(f"chaos: {args.rounds - failed} of {args.rounds} rounds kept every invariant")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
