"""What the terminal shows, and what it can never do to a sweep: a reader that leaves
early stops nothing; a rerun says what it resumes; every count adds up; the runner's own
words for a trial's state, everywhere."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from helpers import (
    LIVE,
    LONGER,
    NOISE,
    ROOT,
    TINY,
    run,
    run_cli,
    runner_argv,
    running_with_runs,
    start,
    sweep_runs,
    trials_of,
    user_env,
    wait_for,
)

pytestmark = pytest.mark.slow  # processes and signals


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_reader_that_leaves_early_stops_nothing(tmp_path, workers):
    """`sweep ... 2>&1 | head -1`: the pipe closes after one line. It used to stop a
    one-worker sweep after three trials, FAILED with end_reason=infrastructure (a
    BrokenPipeError is a ConnectionError), its parent's story skipped."""
    import subprocess

    proc = subprocess.Popen(runner_argv("sweep", str(TINY), "--workers", workers),
                            cwd=tmp_path, env=user_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    proc.stdout.readline()
    proc.stdout.close()  # as `head -1` exits
    assert proc.wait(timeout=600) == 0
    _, parents, children = sweep_runs(tmp_path, "tiny")
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["end_reason"] == "budget"
    assert parents[0].data.metrics["trials_complete"] == 4  # the story went on too
    assert sorted(r.info.status for r in children) == ["FINISHED"] * 4


def test_a_rerun_says_what_it_resumes_and_every_count_adds_up(tmp_path):
    args = ("sweep", str(TINY), "--n-trials", "4", "--workers", "2", *LONGER)
    proc = start(*args, cwd=tmp_path, group=True)
    assert wait_for(lambda: running_with_runs(tmp_path, "tiny", 2)), proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    # Each worker was training (one may just have finished: it completes).
    cut = [t for t in trials_of(tmp_path, "tiny") if t.user_attrs.get("fail_kind")]
    k = len(cut)
    assert k in (1, 2), [(t.number, t.state, t.user_attrs) for t in trials_of(tmp_path, "tiny")]
    status = run("status", str(TINY), *LONGER, cwd=tmp_path)
    assert "WAITING" not in status.stdout and "FAIL " not in status.stdout, status.stdout
    assert f"not counted: {k} CUT SHORT (interrupted), {k} QUEUED" in status.stdout, \
        status.stdout

    again = run(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    resuming = [line for line in again.stderr.splitlines() if line.startswith("resuming")]
    assert len(resuming) == 1, again.stderr
    assert re.fullmatch(rf"resuming sweep 'tiny': \d of 4 trials counted; {k} cut short, "
                        r"queued again", resuming[0]), resuming
    # Each retry names the trial it replaces.
    for t in cut:
        retry = [line for line in again.stderr.splitlines()
                 if f"(retry of trial {t.number})" in line]
        assert len(retry) == 1 and retry[0].startswith("trial "), again.stderr
    # The summary's counts: the counted ones add up to the count, the rest listed apart.
    head = again.stdout.splitlines()[0]
    found = re.fullmatch(r"sweep 'tiny' \(budget met\): 4/4 trials counted \((.*)\)", head)
    assert found, head
    counted_part, _, rest = found.group(1).partition("; not counted: ")
    assert sum(int(n) for n in re.findall(r"(\d+) [A-Z]", counted_part)) == 4, head
    assert rest == f"{k} CUT SHORT (interrupted)", head
    assert len(trials_of(tmp_path, "tiny")) == 4 + k


@pytest.mark.slow
def test_quiet_prints_only_the_summary_and_a_sweep_has_no_warnings(tmp_path):
    (tmp_path / "one.yaml").write_text(LIVE.replace("name: live", "name: one")
                                       .replace("n_trials: 6", "n_trials: 2"))
    loud = run_cli("sweep", "one.yaml", "--n-trials", "1", cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    output = (loud.stdout + loud.stderr).splitlines()
    assert not [line for line in output if NOISE.search(line)], output
    # Never silent while it works: the compile said, the best so far after each trial.
    assert re.search(r"^compiling the graphs for batch \d+ \(has_aux\): ", loud.stderr,
                     re.MULTILINE), loud.stderr
    (line,) = [line for line in loud.stderr.splitlines() if line.startswith("trial ")]
    assert re.search(r"  \| best so far: trial 0, test_accuracy 0\.\d{4}$", line), line
    # status counts against the budget the sweep ran with, or the one it is given.
    ran = run_cli("status", "one.yaml", cwd=tmp_path)
    assert "1 of 1 trials counted, 0 left" in ran.stdout, ran
    asked = run_cli("status", "one.yaml", "--n-trials", "4", cwd=tmp_path)
    assert "1 of 4 trials counted, 3 left" in asked.stdout, asked
    # A file that asks another question is refused, as `sweep` refuses it.
    (tmp_path / "other.yaml").write_text((tmp_path / "one.yaml").read_text().replace(
        "max: 0.3", "max: 0.5"))
    other = run_cli("status", "other.yaml", cwd=tmp_path)
    assert other.returncode == 2 and "was last run from another sweep file" in other.stderr, other
    quiet = run_cli("sweep", "one.yaml", "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert not quiet.stderr.strip(), quiet.stderr
    assert not any(line.startswith("trial ") for line in quiet.stdout.splitlines())
    assert "top 2 by test_accuracy" in quiet.stdout and "workflowType=machine_learning" in \
        quiet.stdout, quiet.stdout


def test_a_reader_that_stops_early_is_no_error(tmp_path):
    (tmp_path / "s.yaml").write_text(LIVE)
    # `runner.py sweep --dry-run | head -1`, as a shell runs it; `true` reads nothing and
    # is gone long before Python has imported, so the write always meets a closed pipe.
    result = subprocess.run(f"{sys.executable} {ROOT / 'runner.py'} sweep s.yaml --dry-run "
                            "| true; echo ${PIPESTATUS[0]}", shell=True, cwd=tmp_path,
                            capture_output=True, text=True, executable="/bin/bash",
                            timeout=120)
    assert result.stdout.splitlines()[-1] == "0", result
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr

