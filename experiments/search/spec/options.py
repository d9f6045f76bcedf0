"""The sweep command's flags, checked with the sweep file before any heavy import."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from experiments.core import config as cfg
from experiments.core.config import ConfigError
from experiments.core.words import masked
from experiments.runtime.paths import writable_ancestor
from experiments.search.spec import sweepfile

STORAGE_PREFIXES = ("postgresql://", "postgresql+psycopg2://", "mysql://", "sqlite:///",
                    "journal:", "grpc://")
MAX_WORKERS = 64
WORKERS_ENV = "RUNNER_WORKERS"  # another default for --workers (the tests run one)


class SweepIncomplete(RuntimeError):
    """The sweep stopped short of its budget for a reason other than the user's."""


def parse_workers(text: str, source: str = "--workers") -> int | None:
    """--workers N or auto (None: one per usable core); ConfigError naming `source`."""
    text = str(text).strip()
    if text == "auto":
        return None
    if text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_WORKERS:
        return int(text)
    raise ConfigError(f"{source}: expected an integer from 1 to {MAX_WORKERS}, or auto, got "
                      f"{cfg.show(text)}")


def default_workers() -> int | None:
    """RUNNER_WORKERS, or auto."""
    given = os.environ.get(WORKERS_ENV)
    return None if given is None else parse_workers(given, WORKERS_ENV)


@dataclass(frozen=True, kw_only=True)
class SweepOptions:
    """The sweep command's flags."""

    path: str
    sets: tuple[str, ...] = ()
    n_trials: int | None = None
    workers: int | None = None  # None: auto (one per usable core), or one per --devices id
    storage: str | None = None
    dry_run: bool = False
    allow_change: bool = False
    parent_run: str | None = None  # set for the worker processes of a parent
    pin_cpu: int | None = None
    quiet: bool = False
    devices: str | None = None  # --devices 0,1,2,3: one worker per device id

    @property
    def device_ids(self) -> tuple[int, ...]:
        """--devices as ids (checked by `check`)."""
        return tuple(int(d) for d in self.devices.split(",")) if self.devices else ()

    @property
    def worker_count(self) -> int:
        return self.workers or len(self.device_ids) or len(os.sched_getaffinity(0))

    def check(self) -> sweepfile.SweepSpec:
        """The sweep file with --set and --n-trials applied; ConfigError/SweepError."""
        spec = sweepfile.load(self.path, cfg.parse_overrides(list(self.sets)))
        if self.n_trials is not None:
            if not 1 <= self.n_trials <= sweepfile.MAX_TRIALS:
                raise ConfigError(f"--n-trials: expected an integer from 1 to "
                                  f"{sweepfile.MAX_TRIALS}, got {self.n_trials}")
            notes = tuple(f"{n.split(' ->')[0]} -> replaced by --n-trials {self.n_trials}"
                          if n.startswith("run_cap:") else n for n in spec.notes)
            spec = dataclasses.replace(spec, n_trials=self.n_trials, notes=notes)
        if self.workers is not None:
            parse_workers(str(self.workers))
        if self.devices is not None:
            spec = self._on_devices(spec)
        if self.storage:
            check_storage(self.storage)
        return spec


    def _on_devices(self, spec: sweepfile.SweepSpec) -> sweepfile.SweepSpec:
        """--devices: distinct ids, one worker each; a single id applies to this process."""
        parts = self.devices.split(",") if self.devices else []
        if not parts or not all(p.strip().isascii() and p.strip().isdigit()
                                and int(p) <= 4095 for p in parts):
            raise ConfigError(f"--devices: expected device ids from 0 to 4095 separated by "
                              f"commas (e.g. 0,1,2,3), got {cfg.show(self.devices)}")
        ids = self.device_ids
        if len(set(ids)) != len(ids):
            raise ConfigError(f"--devices {self.devices}: an id is given twice; one worker "
                              "per device")
        if len(ids) > MAX_WORKERS:
            raise ConfigError(f"--devices: at most {MAX_WORKERS} devices (one worker each), "
                              f"got {len(ids)}")
        if self.workers is not None and self.workers != len(ids):
            raise ConfigError(f"--workers {self.workers} with --devices {self.devices}: one "
                              f"worker per device; give --workers {len(ids)} or leave it out")
        if "device_id" in spec.fixed:
            raise ConfigError("--devices and device_id (in `fixed` or --set) both place "
                              "trials; give one of them")
        if len(ids) == 1:
            return dataclasses.replace(spec, fixed={**spec.fixed, "device_id": ids[0]})
        return spec

    def storage_url(self) -> str:
        """--storage, or the journal file under mlruns/ (safe for processes on one host)."""
        from experiments.tracking.store import MLRUNS

        return self.storage or f"journal:{(MLRUNS / 'optuna' / 'journal.log').resolve()}"

    def worker_argv(self, runner: Path, store_url: str, parent_run: str,
                    device_id: int | None, cpu: int | None) -> list[str]:
        """The whole command of a worker process: `runner.py sweep` with the same file,
        --set and budget, the storage and parent run it joins, and its device or core."""
        return [sys.executable, str(runner), "sweep", self.path,
                *(["--n-trials", str(self.n_trials)] if self.n_trials else []),
                *(["--quiet"] if self.quiet else []),
                *[a for item in self.sets for a in ("--set", item)],
                *(["--set", f"device_id={device_id}"] if device_id is not None else []),
                "--storage", store_url, "--parent-run", parent_run,
                *(["--pin-cpu", str(cpu)] if cpu is not None else [])]


def proxy_address(url: str) -> tuple[str, int]:
    """(host, port) of grpc://HOST:PORT (Optuna's storage proxy); ValueError otherwise."""
    host, _, port = url.removeprefix("grpc://").rstrip("/").rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("expected grpc://HOST:PORT with a port from 1 to 65535")
    return host, int(port)


def _is_mlflows(path: str) -> bool:
    """Whether a SQLite file is the project's MLflow store (or MLFLOW_TRACKING_URI's)."""
    import os

    from experiments.tracking.store import MLRUNS

    mine = [MLRUNS / "mlflow.db"]
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking.startswith("sqlite:///"):
        mine.append(Path(tracking.removeprefix("sqlite:///")))
    target = Path(path).resolve()
    return bool(path) and any(target == m.resolve() for m in mine)


def check_proxy(url: str, port: int) -> None:
    """`storage-proxy --storage URL --port PORT`: a database to stand in front of (not
    another proxy) and a port; ConfigError otherwise."""
    if url.startswith("grpc://"):
        raise ConfigError("storage-proxy --storage: give the database the proxy stands in "
                          "front of (postgresql://...), not another proxy")
    check_storage(url)
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port: expected an integer from 1 to 65535, got {port}")


def check_storage(url: str) -> None:
    """What can be told of a storage URL without opening it; ConfigError otherwise."""
    if not url.startswith(STORAGE_PREFIXES):
        raise ConfigError(f"--storage: expected a URL starting with "
                          f"{', '.join(STORAGE_PREFIXES)}, got {cfg.show(masked(url))}")
    if url.startswith("grpc://"):
        try:
            proxy_address(url)
        except ValueError as exc:
            raise ConfigError(f"--storage {cfg.show(masked(url))}: {exc}") from None
    elif url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        try:
            if not str(path) or str(path) == "." or path.is_dir():
                raise IsADirectoryError(21, "a folder, not a journal file")
            if not path.exists():
                writable_ancestor(path)
        except OSError as exc:
            raise ConfigError(f"--storage {cfg.show(url)}: cannot use it as a journal file "
                              f"({exc.strerror or exc})") from None
    elif url.startswith("sqlite:///") and _is_mlflows(url.removeprefix("sqlite:///")):
        raise ConfigError(f"--storage {url}: that is MLflow's database; Optuna's tables would "
                          "go into it (both keep an alembic_version table): give another "
                          "file, e.g. sqlite:///mlruns/optuna.db")
    elif url.startswith("sqlite:///") and not url.removeprefix("sqlite:///"):
        raise ConfigError("--storage sqlite:///: give a database file, e.g. "
                          "sqlite:///mlruns/optuna.db (in memory, the study would be lost)")
    elif url.startswith("mysql://") and importlib.util.find_spec("MySQLdb") is None:
        raise ConfigError("--storage mysql://...: needs a MySQL driver (pip install "
                          "mysqlclient); PostgreSQL works as installed (postgresql://...)")
