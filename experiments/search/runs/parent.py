"""The sweep's parent run: created once, found again on resume, finalised with the best
trial, the trials table and Optuna's plots; and the summary the command prints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments.runtime import faults, progress
from experiments.search.runs import story
from experiments.search.runs.trial_runs import run_ids
from experiments.search.spec.metrics import describe, pareto, values_text
from experiments.search.spec.space import shown, values_of
from experiments.search.spec.sweepfile import SweepSpec
from experiments.search.spec.warm_start import FROM_ATTR
from experiments.search.study import liveness
from experiments.search.study.study import FINGERPRINT
from experiments.search.trials import ablation
from experiments.search.trials.budget import Budget, ranked, tally, word
from experiments.search.trials.loop import End
from experiments.tracking import views
from experiments.tracking.mlflow_run import MlflowRun
from experiments.tracking.store import experiment_id

PARENT_TAG = "sweep.parent"


def parent_run(client: Any, spec: SweepSpec, sweep_text: str, changed: list[str]) -> str:
    """The sweep's parent run: found again on resume, created once otherwise.

    Its params are the question (method, metric, goal, grad modes, fixed keys); how long
    and how it is searched (budget, timeout, seed, pruner) may change between runs of the
    command and is kept current in tags `sweep.*`. A change let through by --allow-change
    is recorded with the new file.
    """
    exp = experiment_id(client, spec.experiment)

    def existing() -> list:
        return parents(client, exp, spec.name)

    runs = existing()
    if not runs:
        params = {"method": spec.method, "metric": spec.metric, "goal": spec.goal,
                  **({"metrics": describe(spec.metrics)} if spec.multi else {}),
                  **({"repeats": spec.repeats} if spec.repeats > 1 else {}),
                  "grad_modes": ",".join(spec.all_grad_modes()),
                  **{f"fixed.{k}": v for k, v in spec.fixed.items()}}
        tags = {PARENT_TAG: "true", "sweep": spec.name, FINGERPRINT: spec.fingerprint(),
                **{f"wandb.{k}": v for k, v in spec.recorded}}
        run = MlflowRun.start(client, spec.experiment, spec.name, params, tags)
        client.log_text(run.run_id, sweep_text, "sweep.yaml")
        runs = existing()
        # Two workers starting at once may both create one: the earliest wins.
        for extra in runs[1:]:
            if extra.info.run_id == run.run_id:
                client.delete_run(run.run_id)
    chosen = runs[0]
    if changed:
        n = 1 + sum(k.startswith("sweep.change.") for k in chosen.data.tags)
        client.log_text(chosen.info.run_id, sweep_text, f"changes/{n}/sweep.yaml")
        MlflowRun(client, chosen.info.run_id).set_tags({
            f"sweep.change.{n}": "; ".join(changed)[:5000], FINGERPRINT: spec.fingerprint()})
        # Said as --dry-run says it: the real run used to record it without a word (review).
        progress.say(f"{spec.path}: the sweep changed since it last ran, recorded on its "
                     f"parent run as sweep.change.{n}: {'; '.join(changed)}")
    before = chosen.data.tags.get("sweep.pruner")
    if before and before != str(spec.pruner):
        # Not a change of question, but of how trials are stopped (a file without pruner
        # or early_terminate was pruned by the median rule before W&B's engine came).
        progress.say(f"{spec.path}: the pruner changed since this sweep last ran: {before} "
                     f"-> {spec.pruner}")
    MlflowRun(client, chosen.info.run_id).set_tags({
        "sweep.n_trials": spec.n_trials, "sweep.timeout_s": spec.timeout_s or "none",
        "sweep.seed": spec.seed, "sweep.pruner": str(spec.pruner),
        "sweep.target": "none" if spec.target is None else spec.target})
    if chosen.info.status != "RUNNING":
        client.update_run(chosen.info.run_id, status="RUNNING")
    for view_key, state in ui_views(spec).items():
        views.share(client, exp, view_key, state)
    return chosen.info.run_id


def ui_views(spec: SweepSpec) -> dict[str, dict]:
    """The sweep's views in the MLflow UI (tracking/views.py), by key: its runs with the
    metric, the searched params and each run's result; with an ablation, the runs grouped
    by grad mode too."""
    params = [p.key for p in spec.parameters][:4]  # the columns that fit a window
    out = {views.key(spec.name, "runs"): views.runs_view(spec.metric, spec.goal, params,
                                                          spec.name)}
    if len(spec.ablation) > 1:
        out[views.key(spec.name, "ablation")] = views.runs_view(
            spec.metric, spec.goal, params, spec.name, group_by="grad_mode")
    return out


def finalize(client: Any, parent_run_id: str, study: optuna.Study, spec: SweepSpec,
             budget: Budget, end: End) -> FrozenTrial | None:
    """The parent run's last word: its story brought up to date with Optuna's plots, the
    best trial's run tagged, the trials table; returns the best trial. One process at a
    time: two identical commands end together."""
    with story.turn(parent_run_id):
        return _finalize(client, parent_run_id, study, spec, budget, end)


def _finalize(client: Any, parent_run_id: str, study: optuna.Study, spec: SweepSpec,
              budget: Budget, end: End) -> FrozenTrial | None:
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = None
    if done and spec.multi:
        # A trade-off has no one best trial: its answer is the Pareto front, tagged on
        # every run of its trials (each seed and grad mode).
        front = {t.number for t in study.best_trials}
        for t in done:
            for run_id in run_ids(t):
                MlflowRun(client, run_id).set_tags(
                    {"pareto": "true" if t.number in front else "false"})
    elif done:
        best = study.best_trial
        for t in done:
            if t.user_attrs.get("mlflow_run_id"):
                MlflowRun(client, t.user_attrs["mlflow_run_id"]).set_tags(
                    {"best": "true" if t.number == best.number else "false"})
    frame = study.trials_dataframe()
    client.log_text(parent_run_id, frame.to_csv(index=False), "trials.csv")
    faults.point("finalize")
    story.update(client, parent_run_id, study, spec, budget, plots=True)
    training = [t.number for t in trials if t.state == TrialState.RUNNING
                and liveness.alive(t.user_attrs.get("worker"))]
    if training:
        # Another command trains on (a twin given a lower --n-trials met its budget at
        # once): it closes the parent run when it ends. This one closed it FINISHED of a
        # sweep still training (review, reproduced).
        progress.say(f"trial(s) {', '.join(map(str, training))} still train in another "
                     "command: the parent run stays RUNNING until that command ends")
        return best
    MlflowRun(client, parent_run_id).end(end.status, {"end_reason": end})
    return best


def trial_line(t: FrozenTrial, spec: SweepSpec) -> str:
    params = "  ".join(f"{k}={shown(v)}" for k, v in values_of(t).items())
    value = values_text(t.values, spec.metrics)
    if spec.repeats > 1 and t.values is not None and not spec.multi:
        std = t.user_attrs.get(f"{spec.metric}.std")
        seeds = len(t.user_attrs.get("seeds", ()))
        if std is not None and std == std:  # NaN: one seed trained (a pruned trial)
            value += f" ± {std:.4f} ({seeds} seeds)"
    seconds = t.duration.total_seconds() if t.duration else 0.0
    notes = [f"retry of trial {t.user_attrs['retry_of']}" if "retry_of" in t.user_attrs
             else "", f"warm start from {t.user_attrs[FROM_ATTR]}" if FROM_ATTR in t.user_attrs
             else "", t.user_attrs.get("fail_reason", "")]
    return (f"trial {t.number:>3}  {word(t):<8} {value}  {params}  {seconds:.1f}s"
            + "".join(f"  ({note})" for note in notes if note))


def counted_line(t: FrozenTrial, trials: list[FrozenTrial], spec: SweepSpec) -> str:
    """A counted trial's line, with the best so far (one metric) after it."""
    best = [] if spec.multi else ranked(trials, spec)[:1]
    return trial_line(t, spec) + "".join(
        f"  | best so far: trial {b.number}, {spec.metric} {b.value:.4f}" for b in best)


def summary(study: optuna.Study, spec: SweepSpec, budget: Budget, parent_run_id: str,
            end: End, links: list[str], top: int = 5) -> str:
    trials = study.get_trials(deepcopy=False)
    done = ranked(trials, spec)
    lines = [f"sweep '{spec.name}' ({end.text}): {budget.said(len(budget.counted(trials)), '/')}"
             f" ({tally(trials, budget)})"]
    lines += ablation.lines(trials, spec)
    if done and spec.multi:
        front = ranked(pareto(trials, spec.metrics), spec)
        lines.append(f"Pareto front ({describe(spec.metrics)}): {len(front)} trial(s)")
        lines += ["  " + trial_line(t, spec) for t in front]
    elif done:
        lines.append(f"top {min(top, len(done))} by {spec.metric} ({spec.goal}):")
        lines += ["  " + trial_line(t, spec) for t in done[:top]]
    local = not os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http")
    lines.append(f"MLflow: {links[0]}" + ("  (after `python runner.py ui`)" if local else "")
                 + f"  (experiment '{spec.experiment}', parent run {parent_run_id})")
    lines += [f"MLflow, the ablation by grad mode: {extra}" for extra in links[1:]]
    return "\n".join(lines)


def sweep_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def best_run_id(client: Any, spec: SweepSpec) -> str | None:
    """The run of the sweep's best trial, as the parent run records it."""
    exp = client.get_experiment_by_name(spec.experiment)
    if exp is None:
        return None
    found = parents(client, exp.experiment_id, spec.name)
    return found[0].data.tags.get("best_run_id") if found else None


def parents(client: Any, experiment_id: str, sweep: str | None = None) -> list:
    """Parent runs in an experiment, oldest first; of one sweep when it is named (sweeps
    sharing a W&B `project` share its experiment). The name is compared here, not in the
    search string, where a name may hold any character."""
    found, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = 'true'",
                                  order_by=["attributes.start_time ASC"], max_results=1000,
                                  page_token=token)
        found += [r for r in page if sweep is None or r.data.tags.get("sweep") == sweep]
        token = page.token
        if not token:
            return found
