"""The sweep command's flags, checked with the sweep file before any heavy import."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from experiments.core import config as cfg
from experiments.core.config import ConfigError
from experiments.search import sweepfile

STORAGE_PREFIXES = ("postgresql://", "postgresql+psycopg2://", "mysql://", "sqlite:///",
                    "journal:")


class SweepIncomplete(RuntimeError):
    """The sweep stopped short of its budget for a reason other than the user's."""


@dataclass(frozen=True)
class SweepOptions:
    """The sweep command's flags."""

    path: str
    sets: tuple[str, ...] = ()
    n_trials: int | None = None
    workers: int = 1
    storage: str | None = None
    dry_run: bool = False
    allow_change: bool = False
    parent_run: str | None = None  # set for the worker processes of a parent
    pin_cpu: int | None = None

    def check(self) -> sweepfile.SweepSpec:
        """The sweep file with --set and --n-trials applied; ConfigError/SweepError."""
        spec = sweepfile.load(self.path, cfg.parse_overrides(list(self.sets)))
        if self.n_trials is not None:
            if self.n_trials < 1:
                raise ConfigError(f"--n-trials: expected an integer >= 1, got {self.n_trials}")
            spec = dataclasses.replace(spec, n_trials=self.n_trials)
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"--workers: expected an integer from 1 to 64, got {self.workers}")
        if self.storage and not self.storage.startswith(STORAGE_PREFIXES):
            raise ConfigError(f"--storage: expected a URL starting with "
                              f"{', '.join(STORAGE_PREFIXES)}, got {self.storage!r}")
        return spec

    def worker_argv(self) -> list[str]:
        """What a worker process is told: the same file, --set and budget."""
        argv = [self.path, *(["--n-trials", str(self.n_trials)] if self.n_trials else [])]
        return argv + [a for item in self.sets for a in ("--set", item)]
