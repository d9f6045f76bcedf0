"""The objective of one trial: the sampled config, trained once per grad mode.

Each grad mode of the trial (the ablation's, or the one the config says) trains from the
same seed, so the variants start from the same weights and see the same batches; only the
first mode's metric is the objective and is reported to the pruner. Every training is a
nested MLflow run under the sweep's parent run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import optuna

from experiments.core import config as cfg
from experiments.core.train import Callbacks, EpochResult, Stop, compose, trainer_for
from experiments.runtime.progress import EpochBars
from experiments.search import space
from experiments.search import trials as tr
from experiments.search.sweepfile import SweepSpec
from experiments.tracking.tracked_fit import TrackContext, tracked_fit


class TrialFailed(RuntimeError):
    """The objective's own training failed (diverged); the sweep goes on."""


@dataclass
class TrialRunner:
    """Runs the trials of one process (each grad mode on the process's compiled trainer)."""

    spec: SweepSpec
    ctx: TrackContext  # the store, the data, the sweep's experiment and parent run

    def objective(self, trial: optuna.Trial) -> float:
        spec = self.spec
        config = cfg.build({**spec.fixed, **space.suggest(trial, spec.parameters,
                                                           spec.method == "grid")})
        value, epochs_run, pruned, failure = math.nan, config.epochs, False, ""
        for i, mode in enumerate(spec.grad_modes(config.grad_mode)):
            run_config = dataclasses.replace(config, grad_mode=mode, epochs=epochs_run)
            # A sweep shows one bar (its trials) and a line per trial: the epochs only
            # honour Ctrl-C between steps.
            bars = EpochBars(run_config.epochs, enabled=False)
            outcome = tracked_fit(
                self.ctx, run_config, trainer_for(mode), f"trial-{trial.number}-{mode}",
                tags={"sweep": spec.name, "trial": str(trial.number), "grad_mode": mode,
                      "role": "objective" if i == 0 else "ablation",
                      "worker": tr.worker_id()},
                callbacks=compose(bars, self._reporter(trial, run_config.epochs) if i == 0
                                  else None),
                diverged_status="FAILED" if i == 0 else "FINISHED",
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
            if outcome.final is not None and not outcome.diverged:  # the paired result
                trial.set_user_attr(f"{spec.metric}.{mode}", getattr(outcome.final,
                                                                     spec.metric))
        if failure:
            trial.set_user_attr("fail_reason", failure)
            raise TrialFailed(failure)
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {epochs_run}")
        return value

    def _reporter(self, trial: optuna.Trial, epochs: int) -> Callbacks:
        def report(result: EpochResult) -> None:
            trial.report(getattr(result, self.spec.metric), result.epoch)
            # Pruning after the last epoch would only throw a finished result away.
            if result.epoch < epochs and trial.should_prune():
                raise Stop("PRUNED", f"pruned by {self.spec.pruner.type} after epoch "
                                     f"{result.epoch}")

        return Callbacks(on_epoch_end=report)

