"""One training recorded as one MLflow run: where the training loop and the tracking meet.

Whatever ends the run (the last epoch, a NaN loss, a pruning callback, Ctrl-C or an
exception) the MLflow run is closed with a status and a reason, so no run is left RUNNING
by anything short of a hard kill.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from experiments.core.config import BUILT_IN_TASKS, Config, as_dict, flatten
from experiments.core.data import Mnist, n_batches
from experiments.core.hooks import Callbacks, Diverged, EpochResult, Stop, compose
from experiments.core.task import Task
from experiments.core.task_checks import TaskData
from experiments.core.train import Prepared, Trainer, fit, trainer_for
from experiments.runtime import faults, infra, interrupts, kernels
from experiments.runtime.workers import usable_cores
from experiments.tracking import figures
from experiments.tracking.mlflow_run import MlflowRun
from experiments.tracking.reuse import DIGEST_TAG, config_digest


@dataclass(frozen=True)
class TrackContext:
    """What every tracked training in a process shares: where runs go, and the data."""

    client: Any
    data: Mnist | TaskData
    prepared: Prepared
    experiment: str
    task: Task  # the network's task file, loaded and checked
    parent_run_id: str | None = None


@dataclass
class Outcome:
    run_id: str
    history: list[EpochResult] = field(default_factory=list)
    diverged: Diverged | None = None
    stopped: Stop | None = None

    @property
    def final(self) -> EpochResult | None:
        return self.history[-1] if self.history else None


def tracked_fit(ctx: TrackContext, config: Config, trainer: Trainer, run_name: str, *,
                tags: dict[str, str] | None = None, callbacks: Any = None,
                diverged_status: str = "FAILED",
                on_run_start: Callable[[str], None] | None = None,
                save_model: bool | Callable[[EpochResult], tuple[bool, str]] = True
                ) -> Outcome:
    """Train `config` and record it as one MLflow run; returns what happened.

    `save_model` may decide from the final epoch whether the run keeps its model, and
    say why in the run's `model` tag.

    `callbacks` (anything with the three hooks) run after the run has recorded the epoch,
    so a pruning callback that stops training never loses an epoch's metrics.
    """
    # The exact config's digest: a retry finds a lost trial's finished runs by it.
    # The cores it trained on and its kernels' vector ISA: both set the last bits, and a
    # replay holds itself to them (measured in runtime/kernels.py).
    tags = {**(tags or {}), DIGEST_TAG: config_digest(config),
            CORES_TAG: str(len(usable_cores())), ISA_TAG: kernels.isa(),
            **task_tags(ctx.task)}
    run = MlflowRun.start(ctx.client, ctx.experiment, run_name, flatten(config), tags,
                          ctx.parent_run_id)
    faults.point("run_started")
    if on_run_start:
        on_run_start(run.run_id)
    outcome = Outcome(run.run_id)

    def record(result: EpochResult) -> None:
        run.log_epoch(result.epoch, result.metrics())
        outcome.history.append(result)

    status, ending, raising = "FAILED", {}, False
    try:
        run.log_config(as_dict(config))
        run.log_data(ctx.data, {"train": len(ctx.prepared.train_y),
                                "test": len(ctx.prepared.test_y)})
        done = fit(config, ctx.prepared, trainer,
                   compose(Callbacks(on_epoch_end=record), callbacks))
        keep, why = save_model(outcome.history[-1]) if callable(save_model) and \
            outcome.history else (bool(save_model), "")
        if why:
            run.set_tags({"model": why})
        _log_results(run, ctx, done.predictions, trainer.model if keep else None, config)
        status = "FINISHED"
    except Diverged as exc:
        outcome.diverged = exc
        # The way to NaN, step by step (global step numbers), finite values only.
        offset = (exc.epoch - 1) * n_batches(len(ctx.prepared.train_y), config.batch_size)
        run.log_series("diverging_step_loss", {offset + i: v for i, v in
                                               enumerate(exc.losses, start=1) if math.isfinite(v)})
        run.set_tags({"outcome": "diverged", "failure_reason": f"non-finite loss: {exc}",
                      "diverged_epoch": exc.epoch, "diverged_step": exc.step,
                      "model": "not logged: diverged"})
        status = diverged_status
    except Stop as exc:
        outcome.stopped = exc
        run.set_tags({"state": exc.state, "stop_reason": str(exc),
                      "model": f"not logged: {exc.state.lower()}"})
        status = "FINISHED"
    except KeyboardInterrupt:
        ending = {"failure_reason": "interrupted (Ctrl-C or SIGTERM)"}
        status, raising = "KILLED", True
        raise
    except Exception as exc:
        broke = infra.what_broke(exc)
        # Cut short by the store, its disk or the network: not the training's failure.
        ending = {"failure_reason": f"cut short by the infrastructure: {broke}" if broke
                  else f"{type(exc).__name__}: {exc}"[:5000]}
        status, raising = "KILLED" if broke else "FAILED", True
        raise
    finally:
        # A second Ctrl-C must not leave the run RUNNING: it waits until the run is closed.
        with interrupts.shielded():
            try:
                _close(run, status, {**ending, "init_weights_digest": trainer.init_digest},
                       outcome.history, run_name)
            except Exception:
                if not raising:  # else what is already on its way says what happened
                    raise
    return outcome


def _close(run: MlflowRun, status: str, tags: dict[str, str], history: list[EpochResult],
           run_name: str) -> None:
    """The epochs first, then the curves, then the run closed with its last tags: each
    step tried whatever the one before met, so a store that fails once (or comes back)
    still gets the run closed. A run whose record could not be written whole is no result:
    it is closed KILLED with the reason. What fails is raised once all was tried; a run the
    store never let close is closed by recovery (trial_runs)."""
    failed: Exception | None = None
    steps = [run.flush]
    if history:
        steps.append(lambda: run.log_image(figures.learning_curves(history, run_name),
                                           "learning_curves.png"))
    for step in steps:
        try:
            step()
        except Exception as exc:
            failed = failed or exc
    if failed is not None and status != "KILLED":
        status, tags = "KILLED", {**tags, "failure_reason": "cut short by the "
                                  f"infrastructure: {infra.what_broke(failed) or failed}"}
    try:
        run.end(status, tags)
    except Exception as exc:
        failed = failed or exc
    if failed is not None:
        raise failed


CORES_TAG = "cores"
ISA_TAG = "cpu.isa"


def task_tags(task: Task) -> dict[str, str]:
    """Which task file trained the run: its content's digest (replay compares it) and,
    for a user's file, where it was."""
    tags = {"task.digest": task.file.digest, "task.path": str(task.file.path)}
    return tags | ({"task.random": "true"} if task.random else {})


def prepare(config: Config, say: Callable[[str], None], fell_back: str = ""
            ) -> tuple[Config, Task, Mnist | TaskData]:
    """The task (read and imported) and the data of a training, the task's own or MNIST;
    the config completed with the task's keys. TaskError names what is wrong."""
    from experiments.core import task as tasks
    from experiments.core import task_checks as checks
    from experiments.core.data import load

    file = tasks.locate(config.task)
    config = file.complete(config)
    task = tasks.load(file)
    data = checks.own_data(task, config)
    if data is None:
        return config, task, load(config.data.path, config.data.download, say,
                                  fell_back=fell_back)
    say(f"data: {data.name} from task file {data.source} ({len(data.train_labels)} train / "
        f"{len(data.test_labels)} test, inputs {data.input_shape}), digest {data.digest}")
    return config, task, data


def train_once(config: Config, experiment: str, run_name: str, say: Callable[[str], None],
               callbacks: Any = None) -> Outcome:
    """`runner.py train`: load the data, train once, record one run in `experiment`."""
    from experiments.core import devices
    from experiments.core import task_checks as checks
    from experiments.tracking.store import client

    devices.check(config.device, [config.device_id])
    devices.use(config.device, config.device_id)
    interrupts.waiting_for("the training to stop at its next step and close its run as KILLED")
    config, task, mnist = prepare(config, say)
    prepared = Prepared.of(mnist)
    if task.file.name not in BUILT_IN_TASKS:  # the built-in ones are tested
        task = checks.check(task, config, prepared.test_x, checks.classes_of(mnist))
        if task.random:
            say(checks.random_note(task))
    interrupts.check()  # a Ctrl-C while the task was read: no run is started
    ctx = TrackContext(client=client(), data=mnist, prepared=prepared, experiment=experiment,
                       task=task)
    return tracked_fit(ctx, config, trainer_for(config, task), run_name, callbacks=callbacks)


def _log_results(run: MlflowRun, ctx: TrackContext, predicted: Any, model: Any,
                 config: Config) -> None:
    """What a person looks at after training: confusions, sample digits, the model."""
    matrix = figures.confusion(ctx.prepared.test_y, predicted)
    if matrix is not None:
        run.log_image(matrix, "confusion_matrix.png")
    faults.point("log_artifacts")
    digits = not isinstance(ctx.data, TaskData)  # a task's own inputs are not digits
    if digits:
        run.log_image(figures.digit_grid(ctx.data.test_images, ctx.prepared.test_y,
                                         predicted), "test_digits.png")
    if model is not None:
        from experiments.tracking.models import log_model

        log_model(run.client, run.run_id, model, ctx.data.test_images,
                  task=(ctx.task.file, config), classes=int(ctx.prepared.test_y.max()) + 1
                  if not digits else 10)
