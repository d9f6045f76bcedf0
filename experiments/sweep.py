"""A sweep: Optuna trials whose every training is a nested MLflow run under one parent.

This is where the study (Optuna), the tracked run (MLflow + training) and the sweep file
meet. Each trial trains the sampled configuration once per grad mode of the ablation, with
the same seed, so the variants start from the same weights and see the same batches; only
the first mode's metric is the objective and is reported to the pruner.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments import config as cfg
from experiments import faults
from experiments import study as st
from experiments.data import Mnist
from experiments.run import tracked_fit
from experiments.sweepfile import Sweep
from experiments.train import Callbacks, EpochResult, Prepared, Stop, Trainer

PARENT_TAG = "sweep.parent"


class TrialFailed(RuntimeError):
    """The objective's own training failed (diverged); the sweep goes on."""


@dataclass
class Worker:
    """What one process needs to run trials."""

    spec: Sweep
    client: Any
    mnist: Mnist
    prepared: Prepared
    parent_run_id: str
    make_callbacks: Callable[[str, int], Callbacks]
    trainers: dict[str, Trainer] = dataclasses.field(default_factory=dict)

    def trainer(self, mode: str) -> Trainer:
        if mode not in self.trainers:
            self.trainers[mode] = Trainer(mode)
        return self.trainers[mode]

    def objective(self, trial: optuna.Trial) -> float:
        spec = self.spec
        params = st.suggest(trial, spec.parameters)
        config = cfg.build({**spec.fixed, **params})
        value, epochs_run, pruned, failure = math.nan, config.epochs, False, ""
        for i, mode in enumerate(spec.grad_modes(config.grad_mode)):
            run_config = dataclasses.replace(config, grad_mode=mode, epochs=epochs_run)
            callbacks = self.make_callbacks(f"trial {trial.number} {mode} ", run_config.epochs)
            if i == 0:
                callbacks.on_epoch_end.append(self._reporter(trial, run_config.epochs))
            outcome = tracked_fit(
                run_config, self.mnist, self.prepared, self.trainer(mode), self.client,
                spec.name, f"trial-{trial.number}-{mode}", parent_run_id=self.parent_run_id,
                tags={"sweep": spec.name, "trial": str(trial.number), "grad_mode": mode,
                      "role": "objective" if i == 0 else "ablation",
                      "worker": st.worker_id()},
                callbacks=callbacks, diverged_status="FAILED" if i == 0 else "FINISHED",
                # Recorded before training, so a crash recovery can find and close the run.
                on_run_start=lambda run_id, mode=mode: trial.set_user_attr(f"run_id.{mode}",
                                                                           run_id))
            if i == 0:
                trial.set_user_attr("mlflow_run_id", outcome.run_id)
                pruned = outcome.stopped is not None
                # Variants of a pruned trial run as many epochs, so the pair stays comparable.
                epochs_run = len(outcome.history) if pruned else config.epochs
                if outcome.diverged:
                    failure = f"objective {mode} diverged: {outcome.diverged}"
                elif outcome.final is not None:
                    value = getattr(outcome.final, spec.metric)
            elif outcome.diverged:
                trial.set_user_attr(f"diverged.{mode}", str(outcome.diverged))
        if failure:
            trial.set_user_attr("fail_reason", failure)
            raise TrialFailed(failure)
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {epochs_run}")
        return value

    def _reporter(self, trial: optuna.Trial, epochs: int) -> Callable[[EpochResult], None]:
        def report(result: EpochResult) -> None:
            trial.report(getattr(result, self.spec.metric), result.epoch)
            # Pruning after the last epoch would only throw a finished result away.
            if result.epoch < epochs and trial.should_prune():
                raise Stop("PRUNED", f"pruned by {self.spec.pruner} after epoch {result.epoch}")

        return report


def run_ids(t: FrozenTrial) -> list[str]:
    return [v for k, v in t.user_attrs.items() if k.startswith("run_id.")]


def tag_trial_runs(client: Any, t: FrozenTrial) -> None:
    """Copy the Optuna state onto the trial's runs, where the MLflow UI shows it."""
    for run_id in run_ids(t):
        client.set_tag(run_id, "state", t.state.name)


def close_runs(client: Any) -> Callable[[optuna.Study, FrozenTrial, str], None]:
    """Mark the runs of a trial that will not finish (crashed, interrupted) as such, and
    close the ones still RUNNING as KILLED. Finished variants of such a trial keep their
    status but say `state=FAIL`: they are not a result of the sweep."""

    def close(study: optuna.Study, t: FrozenTrial, kind: str) -> None:
        # A process killed between creating a run and recording its id on the trial leaves
        # a run only its tags can find, so look for those too.
        found = set(run_ids(t))
        exp = client.get_experiment_by_name(study.study_name)
        if exp is not None:
            tagged = client.search_runs(
                [exp.experiment_id],
                f"tags.sweep = '{study.study_name}' and tags.trial = '{t.number}' "
                "and attributes.status = 'RUNNING'")
            found |= {r.info.run_id for r in tagged}
        for run_id in sorted(found):
            client.set_tag(run_id, "state", "FAIL")
            client.set_tag(run_id, st.FAIL_KIND, kind)
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "failure_reason", REASONS[kind])
                client.set_terminated(run_id, "KILLED")

    return close


REASONS = {"crashed": "worker process died (crash or kill -9)",
           "interrupted": "interrupted (Ctrl-C or SIGTERM)",
           "orphaned": "left RUNNING by a process that is gone"}


def close_orphans(client: Any, study: optuna.Study) -> int:
    """Close the sweep's runs left RUNNING by a process that is gone although their trial
    is over (a signal that cut the closing short); returns how many."""
    exp = client.get_experiment_by_name(study.study_name)
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
        if states.get(int(tags["trial"])) == TrialState.RUNNING or st.alive(tags.get("worker")):
            continue
        client.set_tag(run.info.run_id, "failure_reason", REASONS["orphaned"])
        client.set_terminated(run.info.run_id, "KILLED")
        n += 1
    return n


def parent_run(client: Any, spec: Sweep, sweep_text: str, changed: list[str]) -> str:
    """The sweep's parent run: found again on resume, created once otherwise. A change let
    through by --allow-change is recorded on it with the new file."""
    from experiments.tracking import Run, experiment_id

    exp = experiment_id(client, spec.name)

    def existing() -> list:
        return client.search_runs([exp], f"tags.`{PARENT_TAG}` = 'true'",
                                  order_by=["attributes.start_time ASC"])

    runs = existing()
    if not runs:
        params = {"method": spec.method, "metric": spec.metric, "goal": spec.goal,
                  "n_trials": spec.n_trials, "seed": spec.seed, "pruner": spec.pruner,
                  "grad_modes": ",".join(grad_modes(spec)),
                  **{f"fixed.{k}": v for k, v in spec.fixed.items()}}
        run = Run.start(client, spec.name, spec.name, params,
                        {PARENT_TAG: "true", "sweep": spec.name,
                         st.FINGERPRINT: spec.fingerprint()})
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
        client.set_tag(chosen.info.run_id, f"sweep.change.{n}", "; ".join(changed)[:5000])
        client.set_tag(chosen.info.run_id, st.FINGERPRINT, spec.fingerprint())
    if chosen.info.status != "RUNNING":
        client.update_run(chosen.info.run_id, status="RUNNING")
    return chosen.info.run_id


def grad_modes(spec: Sweep) -> list[str]:
    """Every grad mode the sweep trains: ablated, searched or fixed."""
    searched = [p for p in spec.parameters if p.key == "grad_mode"]
    if spec.ablation or not searched:
        return list(spec.grad_modes(spec.fixed.get("grad_mode", cfg.Config().grad_mode)))
    return list(searched[0].values)


# How a sweep ended -> the parent run's status. A timeout is a normal end, like the budget.
END_STATUS = {"budget": "FINISHED", "timeout": "FINISHED", "interrupted": "KILLED",
              "workers died": "FAILED", "failed": "FAILED"}


def finalize(client: Any, parent_run_id: str, study: optuna.Study, spec: Sweep,
             end: str) -> FrozenTrial | None:
    """Best trial, trials table and Optuna's plots on the parent run; returns the best."""
    from experiments import plots
    from experiments.tracking import Run

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = None
    if done:
        best = study.best_trial
        client.log_metric(parent_run_id, f"best_{spec.metric}", best.value,
                          step=len(st.finished(study)))
        tags = {"best_trial": str(best.number), "best_value": str(best.value),
                "best_run_id": best.user_attrs.get("mlflow_run_id", ""),
                **{f"best.{k}": str(v) for k, v in best.params.items()}}
        for k, v in tags.items():
            client.set_tag(parent_run_id, k, v)
        for t in done:
            if t.user_attrs.get("mlflow_run_id"):
                client.set_tag(t.user_attrs["mlflow_run_id"], "best",
                               "true" if t.number == best.number else "false")
    frame = study.trials_dataframe()
    client.log_text(parent_run_id, frame.to_csv(index=False), "trials.csv")
    faults.point("finalize")
    for name, figure in plots.optuna_figures(study):
        Run(client, parent_run_id).log_figure(figure, f"plots/{name}.png")
    client.set_tag(parent_run_id, "end_reason", end)
    client.set_terminated(parent_run_id, END_STATUS.get(end, "FAILED"))
    return best


def trial_line(t: FrozenTrial, metric: str) -> str:
    params = "  ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
    value = f"{metric}={t.value:.4f}" if t.value is not None else metric + "=-"
    seconds = t.duration.total_seconds() if t.duration else 0.0
    reason = t.user_attrs.get("fail_reason", "")
    return (f"trial {t.number:>3}  {t.state.name:<8} {value}  {params}  {seconds:.1f}s"
            + (f"  ({reason})" if reason else ""))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


ENDINGS = {"budget": "budget met", "timeout": "stopped by timeout_s",
           "interrupted": "interrupted", "workers died": "worker processes died",
           "failed": "failed"}


def summary(study: optuna.Study, spec: Sweep, parent_run_id: str, end: str, top: int = 5
            ) -> str:
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    done.sort(key=lambda t: t.value, reverse=spec.goal == "maximize")
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        kind = t.user_attrs.get(st.FAIL_KIND) if t.state == TrialState.FAIL else None
        name = f"FAIL ({kind})" if kind else t.state.name
        states[name] = states.get(name, 0) + 1
    lines = [f"sweep '{spec.name}' ({ENDINGS.get(end, end)}): {len(st.finished(study))}/"
             f"{st.budget(spec)} trials counted "
             f"({', '.join(f'{k} {v}' for k, v in sorted(states.items()))})"]
    if done:
        lines.append(f"top {min(top, len(done))} by {spec.metric} ({spec.goal}):")
        lines += ["  " + trial_line(t, spec.metric) for t in done[:top]]
    lines.append(f"MLflow: python runner.py ui  -> experiment '{spec.name}', "
                 f"parent run {parent_run_id}")
    return "\n".join(lines)


def sweep_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")
