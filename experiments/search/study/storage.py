"""The study storage: Optuna's journal file in `mlruns/optuna/` by default, built for
several processes on one machine (SQLite is not); `--storage postgresql://...` uses the RDB
storage with heartbeats, so trials of a worker that died on another machine are failed and
retried by the survivors. Public Optuna API only.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial

from experiments.core.config import ConfigError
from experiments.runtime.retry import retry
from experiments.search.spec.options import masked, proxy_address

PROXY_WAIT_S = float(os.environ.get("RUNNER_PROXY_WAIT_S", "20"))
# A worker that stops beating for GRACE_S is taken for dead (RDB storage, the proxy).
HEARTBEAT_S = int(os.environ.get("RUNNER_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("RUNNER_GRACE_S", "30"))

def open_storage(url: str | None, root: Path,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None],
                 create: bool = True) -> Any:
    """The study storage: a journal file by default, an RDB (with heartbeats) for URLs.

    `on_stale` is called for each trial the heartbeat check failed. With `create` False,
    None where the journal file does not exist yet (no study can).
    """
    # Optuna logs every trial at INFO; the runner says what happened in its own lines.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        if url and url.startswith("grpc://"):
            return _proxy(url)
        if not url or url.startswith("journal:") or url.endswith(".log"):
            path = Path(url.removeprefix("journal:")) if url else root / "optuna" / "journal.log"
            if not create and not path.exists():
                return None
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(WholeLines(str(path)))
        if not create and not retry(lambda: _has_studies(url)):
            return None
        return retry(lambda: _rdb(url, on_stale))
    except Exception as exc:  # the driver's errors are of many kinds
        raise unusable(url, exc) from None


class WholeLines(JournalFileBackend):
    """Optuna's journal file, each append whole or not at all. Optuna appends with one
    buffered write: on a full disk it left half a line, the next append went on from it,
    and every later read of the journal failed (reproduced with a 3 MB tmpfs). Here a
    failed append is cut back to where it began, under the journal's lock."""

    def __init__(self, path: str) -> None:
        self._whole_path, self._whole_lock = path, JournalFileSymlinkLock(path)
        super().__init__(path, lock_obj=self._whole_lock)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n")
        self._whole_lock.acquire()
        try:
            fd = os.open(self._whole_path, os.O_WRONLY | os.O_APPEND)
            try:
                start = os.fstat(fd).st_size
                try:
                    view = memoryview(data.encode("utf-8"))
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, start)  # cutting frees space: this works on a full disk
                    raise
            finally:
                os.close(fd)
        finally:
            self._whole_lock.release()


def _proxy(url: str) -> Any:
    host, port = proxy_address(url)
    with warnings.catch_warnings():  # "experimental" since Optuna 4.2; nothing to act on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        proxy = optuna.storages.GrpcStorageProxy(host=host, port=port)
    proxy.wait_server_ready(timeout=PROXY_WAIT_S)  # ConnectionError after the wait
    return proxy


def serve_proxy(url: str, host: str, port: int, say: Callable[[str], None]) -> None:
    """`runner.py storage-proxy`: Optuna's gRPC proxy in front of `url`, until Ctrl-C.
    Workers then hold connections to it rather than each to the database."""
    _free(host, port)
    storage = open_storage(url, Path("mlruns"), lambda study, t: None)
    shown = "THIS_HOST" if host in ("0.0.0.0", "::", "") else host
    say(f"storage proxy: workers use --storage grpc://{shown}:{port} (for {masked(url)}); "
        "Ctrl-C stops it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.run_grpc_proxy_server(storage, host=host, port=port)
    except RuntimeError as exc:  # gRPC cannot bind the address
        raise ConfigError(f"storage-proxy: cannot serve on {host}:{port} ({exc})") from None


def _free(host: str, port: int) -> None:
    """ConfigError unless `host:port` can be bound. gRPC binds with SO_REUSEPORT, so a
    second proxy on a taken port would start and take half the workers to its database;
    a plain bind (no SO_REUSEPORT) fails on a port anyone holds."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.bind(infos[0][4])
    except OSError as exc:
        raise ConfigError(f"storage-proxy: cannot serve on {host}:{port} "
                          f"({exc.strerror or exc})") from None


def _has_studies(url: str) -> bool:
    """Whether a database holds Optuna's tables, found without writing: RDBStorage would
    create its schema (and SQLite its file) in whatever it is pointed at."""
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and (
            not parsed.database or not Path(parsed.database).is_file()):
        return False
    engine = sqlalchemy.create_engine(url)
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def _rdb(url: str, on_stale: Callable[[optuna.Study, FrozenTrial], None]) -> Any:
    with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.x
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S,
                                          heartbeat_stale_trial_callback=on_stale)


def unusable(url: str | None, exc: BaseException) -> ConfigError:
    """A storage that cannot be opened or read, in one line."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return ConfigError(masked(f"--storage {url}: cannot open the study storage "
                              f"({type(exc).__name__}: {first})"))
