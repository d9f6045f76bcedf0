"""The MLflow runs of trials: their Optuna state copied on, and closed when a trial is lost.

A trial that crashed or was interrupted may leave finished variant runs (an ablation) and
a run still RUNNING; both are marked `state=FAIL` with the `fail_kind`, and RUNNING ones
are closed as KILLED with a reason, so no record looks like a result it is not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments.search.study import liveness
from experiments.search.trials.budget import FAIL_KIND
from experiments.tracking.mlflow_run import MlflowRun


def run_ids(t: FrozenTrial) -> list[str]:
    return [v for k, v in t.user_attrs.items() if k.startswith("run_id.")]


def tag_trial_runs(client: Any, t: FrozenTrial) -> None:
    """Copy the Optuna state onto the trial's runs, where the MLflow UI shows it, with each
    run's `result` in words: a pruned trial's last value is told from a final one."""
    for name, run_id in t.user_attrs.items():
        if name.startswith("run_id."):
            mode = name.removeprefix("run_id.").split(".")[0]
            MlflowRun(client, run_id).set_tags({"state": t.state.name,
                                                "result": result(t, mode)})


def result(t: FrozenTrial, mode: str) -> str:
    """How one grad mode's training of a counted trial ended, in a few words."""
    if f"diverged_at.{mode}" in t.user_attrs or f"diverged.{mode}" in t.user_attrs:
        where = t.user_attrs.get(f"diverged_at.{mode}", "")
        return f"diverged at {where}" if where else "diverged"
    if t.state == TrialState.PRUNED:
        return f"pruned after epoch {t.last_step}" if t.last_step is not None else "pruned"
    if t.state == TrialState.FAIL:
        return "failed"
    if t.user_attrs.get(f"identical.{mode}"):
        return "complete, same bits as the objective"
    return "complete"


def close_runs(client: Any, experiment: str
               ) -> Callable[[optuna.Study, FrozenTrial, str], None]:
    """Mark the runs of a trial that will not finish (crashed, interrupted) as such, and
    close the ones still RUNNING as KILLED. Finished variants of such a trial keep their
    status but say `state=FAIL`: they are not a result of the sweep."""

    def close(study: optuna.Study, t: FrozenTrial, kind: str) -> None:
        # A process killed between creating a run and recording its id on the trial leaves
        # a run only its tags can find, so look for those too.
        found = set(run_ids(t))
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            tagged = client.search_runs(
                [exp.experiment_id],
                f"tags.sweep = '{study.study_name}' and tags.trial = '{t.number}' "
                "and attributes.status = 'RUNNING'")
            found |= {r.info.run_id for r in tagged}
        for run_id in sorted(found):
            run = MlflowRun(client, run_id)
            tags = {"state": "FAIL", FAIL_KIND: kind}
            if client.get_run(run_id).info.status == "RUNNING":
                run.end("KILLED", {**tags, "failure_reason": REASONS[kind]})
            else:
                run.set_tags(tags)

    return close


REASONS = {"crashed": "worker process died (crash or kill -9)",
           "interrupted": "interrupted (Ctrl-C or SIGTERM)",
           "orphaned": "left RUNNING by a process that is gone",
           "infrastructure": "cut short by the store, its disk or the network"}


def close_orphans(client: Any, study: optuna.Study, experiment: str) -> int:
    """Close the sweep's runs left RUNNING although their trial is over (a signal that cut
    the closing short, a store that refused it); returns how many. The runs are read
    before the trials, so a run begun meanwhile has its trial among them, RUNNING. A run
    of another live process is left to it; this process's own are closed (the store may
    have refused to close them when their trial ended)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], f"tags.sweep = '{study.study_name}' and "
                                                   "attributes.status = 'RUNNING'")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    n = 0
    for run in runs:
        tags = run.data.tags
        if tags.get("sweep.parent") == "true" or not tags.get("trial", "").isdigit():
            continue
        t = trials.get(int(tags["trial"]))
        worker = tags.get("worker")
        if (t is not None and t.state == TrialState.RUNNING) or (
                worker != liveness.worker_id() and liveness.alive(worker)):
            continue
        kind = t.user_attrs.get(FAIL_KIND, "") if t is not None else ""
        MlflowRun(client, run.info.run_id).end("KILLED", {
            "failure_reason": REASONS.get(kind, REASONS["orphaned"]),
            **({"state": "FAIL", FAIL_KIND: kind} if kind else {})})
        n += 1
    return n
