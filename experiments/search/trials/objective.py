"""The objective of one trial: the sampled config, trained once per seed and grad mode.

Each grad mode of the trial (the ablation's, or the one the config says) trains from the
same seed, so the variants start from the same weights and see the same batches. With
`repeats: k` the whole set trains with k seeds (the config's own, then seeds derived from
the sweep seed and the repeat index); the objective is the mean over the seeds of the
first mode's metric, and its standard deviation is recorded on the trial and the runs.
The pruner decides on the first seed's curve only: it is reported epoch by epoch, and a
trial pruned there trains no further seed. Every training is a nested MLflow run under
the sweep's parent run; a retry takes over the finished runs of the trial it retries.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass

import numpy as np
import optuna

from experiments.core import config as cfg
from experiments.core.hooks import Callbacks, EpochResult, Stop, compose
from experiments.core.train import trainer_for
from experiments.runtime.progress import EpochBars, compile_line, say
from experiments.search.spec import models_kept, space
from experiments.search.spec.sweepfile import SweepSpec
from experiments.search.spec.warm_start import FROM_ATTR
from experiments.search.study import liveness
from experiments.tracking.mlflow_run import MlflowRun
from experiments.tracking.reuse import take_over
from experiments.tracking.tracked_fit import Outcome, TrackContext, tracked_fit


class TrialFailed(RuntimeError):
    """The objective's own training failed (diverged); the sweep goes on."""


def repeat_seeds(config_seed: int, sweep_seed: int, repeats: int) -> list[int]:
    """The seeds of a configuration's repeats: the config's own first (so one repeat is a
    plain sweep), then distinct seeds derived from the sweep seed and the repeat index."""
    seeds = [config_seed]
    r = 1
    while len(seeds) < repeats:
        seed = int(np.random.SeedSequence([sweep_seed, config_seed, r]).generate_state(1)[0])
        if seed not in seeds:
            seeds.append(seed)
        r += 1
    return seeds


def _compiling(batch_size: int, grad_mode: str) -> None:
    say(compile_line(batch_size, grad_mode))  # a worker is quiet: its parent says it


def mean(values: list[float]) -> float:
    """Their mean; one value is itself, bit for bit."""
    return math.fsum(values) / len(values)


@dataclass
class TrialRunner:
    """Runs the trials of one process (each grad mode on the process's compiled trainer)."""

    spec: SweepSpec
    ctx: TrackContext  # the store, the data, the sweep's experiment and parent run

    def objective(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        spec = self.spec
        config = self.ctx.task.file.complete(cfg.build(
            {**spec.fixed, **space.suggest(trial, spec.parameters, spec.method == "grid")}))
        seeds = repeat_seeds(config.seed, spec.seed, spec.repeats)
        if spec.repeats > 1:
            trial.set_user_attr("seeds", seeds)
        modes = spec.grad_modes(config.grad_mode)
        finals: dict[str, list[EpochResult]] = {mode: [] for mode in modes}
        runs: dict[str, list[str]] = {mode: [] for mode in modes}
        epochs_run, pruned, failure = config.epochs, False, ""
        curves: dict[str, list[tuple[float, ...]]] = {}  # the first seed's, per mode
        for r, seed in enumerate(seeds):
            for i, mode in enumerate(modes):
                run_config = dataclasses.replace(config, grad_mode=mode, epochs=epochs_run,
                                                 seed=seed)
                outcome = self._train(trial, run_config, r, i == 0)
                runs[mode].append(outcome.run_id)
                if r == 0:
                    self._note_outcome(trial, mode, outcome, curves)
                if i == 0 and r == 0:
                    trial.set_user_attr("mlflow_run_id", outcome.run_id)
                    pruned = outcome.stopped is not None
                    # Variants of a pruned trial run as many epochs, so pairs stay comparable.
                    epochs_run = len(outcome.history) if pruned else config.epochs
                at = f" (seed {seed})" if spec.repeats > 1 else ""
                if outcome.diverged and i == 0:
                    failure = failure or f"objective {mode} diverged{at}: {outcome.diverged}"
                elif outcome.diverged:
                    trial.set_user_attr(f"diverged.{mode}", f"{outcome.diverged}{at}")
                elif outcome.final is not None:
                    finals[mode].append(outcome.final)
            if pruned or failure:
                break  # the first seed decided: no further seed trains
        self._record(trial, finals, runs)
        if failure:
            trial.set_user_attr("fail_reason", failure)
            raise TrialFailed(failure)
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {epochs_run}")
        values = tuple(trial.user_attrs[f"{name}.{modes[0]}"] for name, _ in spec.metrics)
        return values if spec.multi else values[0]

    def _train(self, trial: optuna.Trial, config: cfg.Config, repeat: int, first: bool
               ) -> Outcome:
        spec, n, mode = self.spec, trial.number, config.grad_mode
        tags = {"sweep": spec.name, "trial": str(n), "grad_mode": mode,
                "role": "objective" if first else "ablation", "worker": liveness.worker_id()}
        if spec.repeats > 1:
            tags["repeat"] = str(repeat)
        if FROM_ATTR in trial.user_attrs:
            tags[FROM_ATTR] = trial.user_attrs[FROM_ATTR]
        key = f"run_id.{mode}" + (f".{repeat}" if repeat else "")
        lost = trial.user_attrs.get("retry_of")
        pruned_on = first and repeat == 0 and not spec.multi  # the pruner's curve
        if lost is not None:
            found = take_over(self.ctx.client, self._experiment_id(), spec.name, lost, config,
                              self.ctx.data.digest, tags)
            if found:
                trial.set_user_attr(key, found[0])
                for result in found[1] if pruned_on else ():
                    # A curve that trained whole is kept whole: reported, not pruned.
                    trial.report(getattr(result, spec.metric), result.epoch)
                return Outcome(found[0], found[1])
        name = f"trial-{n}-{mode}" + (f"-seed{config.seed}" if spec.repeats > 1 else "")
        # A sweep shows one bar (its trials) and a line per trial: the epochs only honour
        # Ctrl-C between steps.
        bars = EpochBars(config.epochs, enabled=False)
        return tracked_fit(
            self.ctx, config, trainer_for(config, self.ctx.task), name, tags=tags,
            callbacks=compose(bars, Callbacks(on_compile=_compiling),
                              self._reporter(trial, config.epochs) if pruned_on else None),
            diverged_status="FAILED" if first else "FINISHED",
            save_model=lambda final: self._keeps_model(trial, first and repeat == 0, final),
            # Recorded before training, so a crash recovery can find and close the run.
            on_run_start=lambda run_id: trial.set_user_attr(key, run_id))

    def _note_outcome(self, trial: optuna.Trial, mode: str, outcome: Outcome,
                       curves: dict[str, list[tuple[float, ...]]]) -> None:
        """For the ablation's verdict (core/verdict.py) and the runs' `result`: where a mode
        diverged, and (in an ablation) whether its every epoch's losses and accuracy equal
        the objective mode's to the bit (then its run says so too, `same_bits_as`)."""
        if outcome.diverged is not None:  # every sweep's: the run's `result` says where
            trial.set_user_attr(f"diverged_at.{mode}", f"epoch {outcome.diverged.epoch}, "
                                                       f"step {outcome.diverged.step}")
            return
        if len(self.spec.ablation) < 2:
            return
        if outcome.final is not None:  # the verdict pairs the first seed's trainings
            trial.set_user_attr(f"first.{self.spec.metric}.{mode}",
                                getattr(outcome.final, self.spec.metric))
        curves[mode] = [(e.train_loss, e.test_loss, e.test_accuracy) for e in outcome.history]
        base = next(iter(curves))
        if mode != base and curves[mode] and curves[mode] == curves[base]:
            trial.set_user_attr(f"identical.{mode}", True)
            MlflowRun(self.ctx.client, outcome.run_id).set_tags({"same_bits_as": base})

    def _record(self, trial: optuna.Trial, finals: dict[str, list[EpochResult]],
                runs: dict[str, list[str]]) -> None:
        """Each mode's result over its seeds (mean, and std with several) on the trial;
        with repeats, the mean and std on every run of the mode too."""
        for mode, results in finals.items():
            for name, _ in self.spec.metrics:
                values = [getattr(x, name) for x in results]
                if not values:
                    continue
                trial.set_user_attr(f"{name}.{mode}", mean(values))
                if self.spec.repeats == 1:
                    continue
                std = statistics.stdev(values) if len(values) > 1 else math.nan
                trial.set_user_attr(f"{name}.{mode}.std", std)
                if mode == next(iter(finals)):  # the objective's mode: the trial's noise
                    trial.set_user_attr(f"{name}.std", std)
                for run_id in runs[mode]:
                    self.ctx.client.log_metric(run_id, f"{name}_mean", mean(values))
                    if len(values) > 1:
                        self.ctx.client.log_metric(run_id, f"{name}_std", std)

    def _keeps_model(self, trial: optuna.Trial, objective_run: bool, final: EpochResult
                     ) -> tuple[bool, str]:
        """The sweep's `models:` for this training (models_kept.py)."""
        spec = self.spec
        unranked = "a trade-off ranks no trial first" if spec.multi else \
            "the trial's rank is known only after its last seed" if spec.repeats > 1 else ""
        others = [] if unranked or spec.models.kind != "top_k" else [
            t.value for t in trial.study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
        return models_kept.keeps(spec.models, getattr(final, spec.metric), others,
                                 spec.goal == "maximize", objective_run, unranked)

    def _experiment_id(self) -> str:
        from experiments.tracking.store import experiment_id

        return experiment_id(self.ctx.client, self.ctx.experiment)

    def _reporter(self, trial: optuna.Trial, epochs: int) -> Callbacks:
        def report(result: EpochResult) -> None:
            trial.report(getattr(result, self.spec.metric), result.epoch)
            # Pruning after the last epoch would only throw a finished result away.
            if result.epoch < epochs and trial.should_prune():
                raise Stop("PRUNED", f"pruned by {self.spec.pruner.rule} after epoch "
                                     f"{result.epoch}")

        return Callbacks(on_epoch_end=report)
