"""Failures of the infrastructure, told apart from failures of a trial.

A trial's own failure (its training diverged, its config cannot train) counts towards the
budget. A failure of what the runner stands on (the tracking store or its disk, the
study storage, the network to a tracking server or a database) says nothing about the
trial: it is failed as not counted, queued again, and a worker that meets such failures
several trials in a row stops with one line. Told by the exception and what caused it,
without importing the libraries that raise them (this layer imports no framework).
"""

from __future__ import annotations

import errno

# Errors of the disk or the file system under a store.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}
# (module prefix, class name) of drivers' and clients' errors about the connection.
_CONNECTION = {
    ("sqlalchemy", "OperationalError"), ("sqlalchemy", "InterfaceError"),
    ("sqlalchemy", "DisconnectionError"), ("sqlalchemy", "TimeoutError"),
    ("psycopg", "OperationalError"), ("psycopg", "InterfaceError"),
    ("psycopg2", "OperationalError"), ("psycopg2", "InterfaceError"),
    ("requests", "ConnectionError"), ("requests", "Timeout"), ("requests", "ReadTimeout"),
    ("requests", "ConnectTimeout"), ("urllib3", "MaxRetryError"),
    ("urllib3", "NewConnectionError"), ("urllib3", "ProtocolError"),
    ("grpc", "_InactiveRpcError"), ("grpc", "RpcError"), ("grpc", "_MultiThreadedRendezvous"),
}
# What MLflow's and SQLite's messages say when a store cannot be written or reached (MLflow
# re-raises driver errors as its own exception, with the driver's text in the message).
_MESSAGES = (
    ("database or disk is full", "disk full"), ("no space left on device", "disk full"),
    ("disk i/o error", "disk I/O error"), ("read-only file system", "read-only file system"),
    ("unable to open database file", "database file cannot be opened"),
    ("too many 500 error responses", "tracking server error"),
    ("too many 503 error responses", "tracking server unavailable"),
    ("max retries exceeded", "server unreachable"), ("connection refused", "server unreachable"),
    ("failed to establish a new connection", "server unreachable"),
    ("server closed the connection unexpectedly", "database connection lost"),
    ("terminating connection due to administrator command", "database restarted"),
    ("connection to server", "database unreachable"),
    ("the database system is starting up", "database restarting"),
    ("the database system is shutting down", "database restarting"),
    ("statuscode.unavailable", "storage proxy unreachable"),
)


def what_broke(exc: BaseException) -> str:
    """'' for the trial's own failure; else what broke, in a few words and the error's first
    line ('disk full (OSError: [Errno 28] No space left on device)')."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = _kind(current)
        if kind:
            return f"{kind} ({type(current).__name__}: {_said(current)})"
        current = current.__cause__ or current.__context__
    return ""


def _said(exc: BaseException) -> str:
    """The error's own words in one line: gRPC's status and details (its str() is a
    multi-line dump), else the first line."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        try:
            return f"{getattr(code(), 'name', code())}: {details()}"[:200]
        except Exception:  # not a finished RPC after all
            pass
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _kind(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "disk error"
    if isinstance(exc, ConnectionError | TimeoutError):
        return "connection lost"
    for klass in type(exc).__mro__:
        root = klass.__module__.split(".")[0]
        if (root, klass.__name__) in _CONNECTION:
            return _by_message(exc) or "connection lost"
    root = type(exc).__module__.split(".")[0]
    if root == "mlflow":
        # The tracking client failed: whatever it says, not the trial's doing (its own
        # failures, a diverged loss or a config that cannot train, raise other errors).
        return _by_message(exc) or "tracking error"
    if root in ("sqlite3", "sqlalchemy", "optuna", "psycopg", "grpc"):
        return _by_message(exc)
    return ""


def _by_message(exc: BaseException) -> str:
    text = str(exc).lower()
    return next((kind for needle, kind in _MESSAGES if needle in text), "")


# Trials in a row a worker lets fail on the infrastructure before it stops.
MAX_IN_A_ROW = 3


class InfrastructureDown(RuntimeError):
    """The infrastructure failed MAX_IN_A_ROW times in a row: the worker stops (exit 1)."""

    def __init__(self, broke: str, times: int) -> None:
        self.broke = broke
        super().__init__(f"{broke}; {times} attempt(s) in a row failed on it, so this "
                         "process stopped: nothing finished is lost and the trials it cut "
                         "short do not count; fix it, then rerun the same command to resume")
