"""What the training loop reports and how it is told to stop: its epoch results, its
callbacks (the CLI renders them, the tracker records them, the sweep reports them to
Optuna), and the two ways a training ends early. No MindSpore here: readers of results
(a retry taking over a run, the tests) import this without the framework.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, losses: list[float]) -> None:
        super().__init__(f"loss became {losses[-1]} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, losses[-1]
        self.losses = losses  # every step's loss in the epoch that diverged


class Stop(Exception):
    """Raised by an epoch-end callback to end training early (a pruned trial, say)."""

    def __init__(self, state: str, reason: str = "") -> None:
        super().__init__(reason or state)
        self.state = state


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    grad_cosine: float
    grad_norm_ratio: float
    epoch_time_s: float
    # Seconds spent in the training steps so far (the evaluation left out): the cost a
    # trade-off sweep weighs against accuracy. A timing, so never part of "same bits".
    train_time_s: float = 0.0

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if k != "epoch"}


def _nothing(*args: Any) -> None:
    return None


@dataclass(frozen=True)
class Callbacks:
    """Hooks the loop calls; the CLI renders them, the tracker records them, the sweep
    reports them to Optuna. `on_epoch_end` may raise `Stop` to end training after the
    epoch (a pruned trial, say)."""

    on_epoch_start: Callable[[int, int], None] = _nothing  # (epoch, steps in the epoch)
    on_step: Callable[[int, int], None] = _nothing  # (epoch, step)
    on_epoch_end: Callable[[EpochResult], None] = _nothing
    # (batch size, grad mode): the graphs are about to compile, seconds before the first
    # step (a terminal that says nothing then looks stuck).
    on_compile: Callable[[int, str], None] = _nothing


def compose(*parts: Any) -> Callbacks:
    """Callbacks that call each part's hooks in order. A part is anything with the three
    epoch hooks and maybe `on_compile` (a `Callbacks`, a progress renderer, ...); None
    parts are skipped."""
    hooks = tuple(p for p in parts if p is not None)

    def start(epoch: int, n_steps: int) -> None:
        for p in hooks:
            p.on_epoch_start(epoch, n_steps)

    def step(epoch: int, n: int) -> None:
        for p in hooks:
            p.on_step(epoch, n)

    def end(result: EpochResult) -> None:
        for p in hooks:
            p.on_epoch_end(result)

    def compiling(batch_size: int, grad_mode: str) -> None:
        for p in hooks:
            getattr(p, "on_compile", _nothing)(batch_size, grad_mode)

    return Callbacks(start, step, end, compiling)
