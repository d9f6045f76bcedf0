"""Terminal rendering: progress bars and one-line summaries on stderr.

The epoch bars are training callbacks by shape (`on_epoch_start`, `on_step`,
`on_epoch_end`), so this layer needs nothing from the training core.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from experiments.runtime import interrupts

_quiet = False  # --quiet: the command's result only, process-wide like the terminal itself


def be_quiet(quiet: bool = True) -> None:
    global _quiet
    _quiet = quiet


def _tty() -> bool:
    return sys.stderr.isatty() and not _quiet


def say(message: str) -> None:
    """One line on stderr that does not tear an open progress bar (none under --quiet)."""
    if not _quiet:
        tqdm.write(message, file=sys.stderr)


def epoch_line(result: Any, epochs: int, prefix: str = "") -> str:
    return (f"{prefix}epoch {result.epoch}/{epochs}  train_loss {result.train_loss:.4f}  "
            f"test_loss {result.test_loss:.4f}  test_accuracy {result.test_accuracy:.4f}  "
            f"grad_cosine {result.grad_cosine:+.3f}  grad_norm_ratio {result.grad_norm_ratio:.3g}"
            f"  {result.epoch_time_s:.2f}s")


class EpochBars:
    """A tqdm bar per epoch and a one-line summary when it ends; Ctrl-C is honoured
    between steps, never inside a database write."""

    def __init__(self, epochs: int, prefix: str = "", enabled: bool = True) -> None:
        self.epochs, self.prefix, self.enabled = epochs, prefix, enabled
        self._bar: tqdm | None = None

    def on_epoch_start(self, epoch: int, n_steps: int) -> None:
        self._close()  # left open by an epoch that ended in an exception
        self._bar = tqdm(total=n_steps, desc=f"{self.prefix}epoch {epoch}/{self.epochs}",
                         unit="step", leave=False, disable=not (self.enabled and _tty()),
                         file=sys.stderr)

    def on_step(self, epoch: int, step: int) -> None:
        interrupts.check()
        if self._bar is not None:
            self._bar.update(1)

    def on_epoch_end(self, result: Any) -> None:
        self._close()
        if self.enabled:
            say(epoch_line(result, self.epochs, self.prefix))

    def on_compile(self, batch_size: int, grad_mode: str) -> None:
        if self.enabled:
            say(compile_line(batch_size, grad_mode, self.prefix))

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def compile_line(batch_size: int, grad_mode: str, prefix: str = "") -> str:
    # Seconds to tens of seconds on 2 cores (8-19 s per grad mode measured, cold).
    return (f"{prefix}compiling the graphs for batch {batch_size} ({grad_mode}): once per "
            "batch size and grad mode in a process ...")


def trial_bar(total: int, done: int, enabled: bool = True) -> tqdm:
    return tqdm(total=total, initial=min(done, total), desc="trials", unit="trial",
                disable=not (enabled and _tty()), file=sys.stderr)


def span(seconds: float) -> str:
    """A duration as people read it: '45s', '2m31s', '1h02m'."""
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"
