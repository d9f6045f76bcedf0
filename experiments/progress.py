"""Terminal rendering of training progress: the CLI's side of the training callbacks."""

from __future__ import annotations

import sys

from tqdm import tqdm

from experiments import interrupts
from experiments.train import Callbacks, EpochResult


def _tty() -> bool:
    return sys.stderr.isatty()


def say(message: str) -> None:
    """One line on stderr that does not tear an open progress bar."""
    tqdm.write(message, file=sys.stderr)


def epoch_line(result: EpochResult, epochs: int, prefix: str = "") -> str:
    return (f"{prefix}epoch {result.epoch}/{epochs}  train_loss {result.train_loss:.4f}  "
            f"test_loss {result.test_loss:.4f}  test_accuracy {result.test_accuracy:.4f}  "
            f"grad_cosine {result.grad_cosine:+.3f}  grad_norm_ratio {result.grad_norm_ratio:.3g}"
            f"  {result.epoch_time_s:.2f}s")


def epoch_bars(epochs: int, prefix: str = "", enabled: bool = True) -> Callbacks:
    """A tqdm bar per epoch and a one-line summary when it ends."""
    state: dict[str, tqdm] = {}

    def start(epoch: int, n_steps: int) -> None:
        if "bar" in state:  # left open by an epoch that ended in an exception
            state.pop("bar").close()
        state["bar"] = tqdm(total=n_steps, desc=f"{prefix}epoch {epoch}/{epochs}", unit="step",
                            leave=False, disable=not (enabled and _tty()), file=sys.stderr)

    def step(epoch: int, n: int) -> None:
        interrupts.check()  # between steps: never inside a database write
        state["bar"].update(1)

    def end(result: EpochResult) -> None:
        state.pop("bar").close()
        if enabled:
            say(epoch_line(result, epochs, prefix))

    return Callbacks(on_epoch_start=start, on_step=step, on_epoch_end=[end])


def trial_bar(total: int, done: int, enabled: bool = True) -> tqdm:
    return tqdm(total=total, initial=min(done, total), desc="trials", unit="trial",
                disable=not (enabled and _tty()), file=sys.stderr)
