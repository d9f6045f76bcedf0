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

from experiments.search import liveness as lv
from experiments.search import trials as tr


def run_ids(t: FrozenTrial) -> list[str]:
    return [v for k, v in t.user_attrs.items() if k.startswith("run_id.")]


def tag_trial_runs(client: Any, t: FrozenTrial) -> None:
    """Copy the Optuna state onto the trial's runs, where the MLflow UI shows it."""
    for run_id in run_ids(t):
        client.set_tag(run_id, "state", t.state.name)


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
            client.set_tag(run_id, "state", "FAIL")
            client.set_tag(run_id, tr.FAIL_KIND, kind)
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "failure_reason", REASONS[kind])
                client.set_terminated(run_id, "KILLED")

    return close


REASONS = {"crashed": "worker process died (crash or kill -9)",
           "interrupted": "interrupted (Ctrl-C or SIGTERM)",
           "orphaned": "left RUNNING by a process that is gone",
           "infrastructure": "cut short by the store, its disk or the network"}


def close_orphans(client: Any, study: optuna.Study, experiment: str) -> int:
    """Close the sweep's runs left RUNNING by a process that is gone although their trial
    is over (a signal that cut the closing short); returns how many."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    n = 0
    for run in client.search_runs([exp.experiment_id],
                                  f"tags.sweep = '{study.study_name}' and "
                                  "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get("sweep.parent") == "true" or not tags.get("trial", "").isdigit():
            continue
        if states.get(int(tags["trial"])) == TrialState.RUNNING or lv.alive(tags.get("worker")):
            continue
        client.set_tag(run.info.run_id, "failure_reason", REASONS["orphaned"])
        client.set_terminated(run.info.run_id, "KILLED")
        n += 1
    return n
