"""One training run recorded in MLflow: where the training loop and the tracking meet.

Whatever ends the run (the last epoch, a NaN loss, a pruning callback, Ctrl-C or an
exception) the MLflow run is closed with a status and a reason, so no run is left RUNNING
by anything short of a hard kill.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from experiments import faults, interrupts, plots
from experiments.config import Config, as_dict, flatten
from experiments.data import Mnist, n_batches
from experiments.tracking import Run
from experiments.train import Callbacks, Diverged, EpochResult, Prepared, Stop, Trainer, fit


@dataclass
class Outcome:
    run_id: str
    history: list[EpochResult] = field(default_factory=list)
    diverged: Diverged | None = None
    stopped: Stop | None = None

    @property
    def final(self) -> EpochResult | None:
        return self.history[-1] if self.history else None


def tracked_fit(config: Config, data: Mnist, prepared: Prepared, trainer: Trainer, client: Any,
                experiment: str, run_name: str, *, tags: dict[str, str] | None = None,
                parent_run_id: str | None = None, callbacks: Callbacks | None = None,
                diverged_status: str = "FAILED",
                on_run_start: Callable[[str], None] | None = None,
                save_model: bool = True) -> Outcome:
    """Train `config` and record it as one MLflow run; returns what happened."""
    run = Run.start(client, experiment, run_name, flatten(config), tags, parent_run_id)
    faults.point("run_started")
    if on_run_start:
        on_run_start(run.run_id)
    outcome = Outcome(run.run_id)
    callbacks = callbacks or Callbacks()

    def record(result: EpochResult) -> None:
        run.log_epoch(result.epoch, result.metrics())
        outcome.history.append(result)

    callbacks.on_epoch_end.insert(0, record)
    status = "FAILED"
    try:
        run.log_config(as_dict(config))
        run.log_data(data, {"train": len(prepared.train_y), "test": len(prepared.test_y)})
        fit(config, prepared, trainer, callbacks)
        _log_results(run, trainer, prepared, data, save_model)
        status = "FINISHED"
    except Diverged as exc:
        outcome.diverged = exc
        # The way to NaN, step by step (global step numbers), finite values only.
        offset = (exc.epoch - 1) * n_batches(len(prepared.train_y), config.batch_size)
        run.log_series("diverging_step_loss", {offset + i: v for i, v in
                                               enumerate(exc.losses, start=1) if math.isfinite(v)})
        run.set_tags({"outcome": "diverged", "failure_reason": f"non-finite loss: {exc}",
                      "diverged_epoch": exc.epoch, "diverged_step": exc.step})
        status = diverged_status
    except Stop as exc:
        outcome.stopped = exc
        run.set_tags({"state": exc.state, "stop_reason": str(exc)})
        status = "FINISHED"
    except KeyboardInterrupt:
        with interrupts.shielded():
            run.set_tags({"failure_reason": "interrupted (Ctrl-C or SIGTERM)"})
        status = "KILLED"
        raise
    except Exception as exc:
        run.set_tags({"failure_reason": f"{type(exc).__name__}: {exc}"[:5000]})
        raise
    finally:
        # A second Ctrl-C must not leave the run RUNNING: it waits until the run is closed.
        with interrupts.shielded():
            run.set_tags({"init_weights_digest": trainer.init_digest})
            if outcome.history:
                run.log_image(plots.learning_curves(outcome.history, run_name),
                              "learning_curves.png")
            run.end(status)
    return outcome


def _log_results(run: Run, trainer: Trainer, prepared: Prepared, data: Mnist,
                 save_model: bool) -> None:
    """What a person looks at after training: confusions, sample digits, the model."""
    predicted = trainer.predictions  # fit() ends by evaluating the final weights on the test set
    run.log_image(plots.confusion(prepared.test_y, predicted), "confusion_matrix.png")
    faults.point("log_artifacts")
    run.log_image(plots.digit_grid(data.test_images, prepared.test_y, predicted),
                  "test_digits.png")
    if save_model:
        from experiments.predict import log_model

        log_model(run.client, run.run_id, trainer.model, data.test_images)
