"""Any number of workers gives the one-worker answer (`ordered: true`), or decides on what
is done at the moment (`ordered: false`)."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from helpers import ROOT, SMALL_SWEEP, journal_study, mlflow_client, run_cli, write_sweep


@pytest.mark.slow
def test_two_workers_give_the_one_worker_answer(tmp_path):
    """sweeps/lr.yaml reads its history twice: TPE after 10 random trials, and a median
    pruner from the second epoch. Without the ordering, two workers pruned trial 3 an
    epoch later and drew another trial 11 (measured before the fix)."""
    env = {"RUNNER_CACHE": str(tmp_path / "cache")}
    for workers in ("1", "2"):
        (tmp_path / workers).mkdir()
        done = run_cli("sweep", str(LR), "--workers", workers, "--set", "data.download=false",
                       cwd=tmp_path / workers, env=env)
        assert done.returncode == 0, done.stderr
        if workers == "2":  # the main job as a user runs it: the README shows its answer
            assert untimed(summary_of(done.stdout)) == untimed(summary_of(readme_output()))
    one, two = answer(tmp_path / "1", "lr"), answer(tmp_path / "2", "lr")
    assert one == two
    trials = journal_study(tmp_path / "2", "lr").trials
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers trained
    assert all(t.user_attrs.get("ordered", True) for t in trials)
    assert [t.state.name for t in trials].count("PRUNED") >= 3  # the pruner did decide
    # Every trained run says what became of its model: kept, or why not.
    client = mlflow_client(tmp_path / "2")
    tags = [r.data.tags for r in client.search_runs(
        [client.get_experiment_by_name("lr").experiment_id]) if "trial" in r.data.tags]
    assert len(tags) == 12 and all("model" in t for t in tags)
    assert {t["model"] for t in tags if t.get("state") == "PRUNED"} == {"not logged: pruned"}
    assert {t["model"] for t in tags if t.get("outcome") == "diverged"} == \
        {"not logged: diverged"}


LR = ROOT / "sweeps" / "lr.yaml"


def readme_output() -> str:
    """The main job's terminal output as README.md shows it."""
    text = (ROOT / "README.md").read_text().split("## What you see", 1)[1]
    return text.split("```\n", 2)[1]


def summary_of(output: str) -> list[str]:
    """The summary's count line and its top-5 lines."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("sweep 'lr' ("))
    return lines[start:start + 7]


def untimed(lines: list[str]) -> list[str]:
    return [re.sub(r"  \d+\.\ds$", "", line) for line in lines]


def answer(folder: Path, name: str) -> list:
    return sorted((t.number, t.state.name, t.value, sorted(t.params.items()))
                  for t in journal_study(folder, name).trials)


@pytest.mark.parametrize("value", ["maybe", "1", "'true'", "[true]"])
def test_a_bad_ordered_value_is_refused(tmp_path, value):
    path = write_sweep(tmp_path, SMALL_SWEEP + f"ordered: {value}\n")
    done = run_cli("sweep", str(path), "--dry-run", cwd=tmp_path)
    assert done.returncode == 2
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "ordered" in line and "expected true or false" in line


@pytest.mark.slow
def test_unordered_workers_run_the_budget(tmp_path):
    """`ordered: false`: the workers decide on what is done, as Optuna does; the budget,
    the runs and the dry run's word for it are as for any sweep."""
    path = write_sweep(tmp_path, SMALL_SWEEP.replace("pruner: {type: none}",
                                               "pruner: {type: median, warmup_epochs: 0}")
                       .replace("method: random", "method: tpe") + "ordered: false\n")
    dry = run_cli("sweep", str(path), "--dry-run", cwd=tmp_path)
    assert "(ordered: false): faster, but the answer depends on timing" in dry.stdout
    done = run_cli("sweep", str(path), "--workers", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trials = journal_study(tmp_path, "m").trials
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 5
    assert len({t.user_attrs["worker"] for t in trials}) == 2


def test_the_ordered_pruner_decides_at_once_only_when_nothing_running_can_change_it(
        monkeypatch):
    from experiments.search.study import liveness, ordered

    monkeypatch.setattr(ordered, "MAX_WAIT_S", 0.3)
    marked = []
    judge = ordered.Judge(alive=liveness.still_running, sweep=liveness.fail_stale,
                          unordered=lambda study, t: marked.append(t.number))
    pruner = ordered.OrderedPruner(optuna.pruners.MedianPruner(n_startup_trials=1), judge)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    done = study.ask()
    done.report(0.9, 1)
    study.tell(done, 0.9)
    earlier, late = study.ask(), study.ask()  # trial 1 runs on; trial 2 asks
    earlier.report(0.1, 1)
    # Trial 2's 0.4 is below the median whether trial 1 ends complete (0.1, 0.9) or not
    # (0.9 alone): pruned, at once.
    late.report(0.4, 1)
    assert late.should_prune() and not marked
    # At 0.6 the answer hangs on trial 1: below 0.9 alone, above the median of 0.1 and
    # 0.9 (0.5). It waits, and past MAX_WAIT_S decides on what is done, marked unordered.
    late2 = study.ask()
    late2.report(0.6, 1)
    assert late2.should_prune() and marked == [late2.number]
    study.tell(earlier, 0.1)
    # Trial 1 done: nothing is running below trial 4, which decides at once.
    fourth = study.ask()
    fourth.report(0.6, 1)
    assert not fourth.should_prune() and marked == [late2.number]

