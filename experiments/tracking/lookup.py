"""Finding a store a user names, and reading what a command needs before MLflow loads:
the store's own path for messages, its experiments (with sqlite3, read only), a client on
a project folder, an mlruns/ folder, an mlflow.db file or a URI.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from experiments.core.words import masked
from experiments.tracking.store import NoStore, holds_mlflow, tracking_uri


def local_experiments() -> dict[str, int] | None:
    """The active experiments of the local SQLite store with their active runs, read with
    sqlite3, read only: a command can refuse an unknown name, or a store with no runs,
    before MLflow loads (~3 s) and without writing its lock. None when the store is not a
    local file, or is busy (MLflow then waits its turn); NoStore when the file is not an
    MLflow store or cannot be read (MLflow printed a 75-line traceback, measured)."""
    uri = tracking_uri()
    path = Path(uri.removeprefix("sqlite:///").split("?")[0])
    if not uri.startswith("sqlite:///") or not path.is_file():
        return None
    try:
        with _creator_done(path.parent / ".lock"), contextlib.closing(
                sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT e.name, COUNT(r.run_uuid) FROM experiments e LEFT JOIN runs r "
                "ON r.experiment_id = e.experiment_id AND r.lifecycle_stage = 'active' "
                "WHERE e.lifecycle_stage = 'active' GROUP BY e.name").fetchall()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return None
        raise NoStore(f"the MLflow store {path} cannot be read ({exc}): is it an MLflow "
                      "store?") from None
    except sqlite3.DatabaseError as exc:
        raise NoStore(f"the MLflow store {path} cannot be read ({exc}): restore it from a "
                      "backup, or move it away to start a new one") from None
    return dict(rows)


@contextlib.contextmanager
def _creator_done(lock: Path) -> Iterator[None]:
    """Wait while a process creates the store (it holds the store's lock, store.py): a
    store half made would read as broken. The lock file is opened, never created."""
    try:
        fh = open(lock)  # noqa: SIM115 - closed below
    except OSError:  # no creator ever ran here
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
        yield


def client_for(store: str | Path) -> Any:
    """A reading client on a store named by the user: a project folder (its mlruns/),
    an mlruns/ folder, an mlflow.db file or a tracking URI. NoStore when there is none
    (nothing is created)."""
    from mlflow import MlflowClient

    text = str(store)
    if text.startswith("sqlite:///"):  # MLflow would create the file, or write its tables
        text = text.removeprefix("sqlite:///").split("?")[0]
    elif "://" in text:
        if not text.startswith(("http://", "https://")):
            _check_database(text)
        return MlflowClient(text)
    path = Path(text).expanduser()
    found = next((p for p in (path / "mlruns" / "mlflow.db", path / "mlflow.db", path)
                  if p.is_file()), None)
    if found is None or not holds_mlflow(found):
        raise NoStore(f"no MLflow store at {path}: give a project folder (with mlruns/), "
                      "its mlruns/ folder, an mlflow.db file or a tracking URI")
    return MlflowClient(f"sqlite:///{found.resolve()}")


def _check_database(uri: str) -> None:
    """A database URI names an MLflow store only when it has MLflow's tables: MLflow would
    otherwise write them into it."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri)
        try:
            found = sqlalchemy.inspect(engine).has_table("experiments")
        finally:
            engine.dispose()
    except Exception as exc:  # a driver missing, a server down, a bad URL
        why = " ".join(masked(str(exc)).split())  # a driver's message spans lines
        raise NoStore(f"cannot read the store at {masked(uri)}: {type(exc).__name__}: "
                      f"{why}"[:300]) from None
    if not found:
        raise NoStore(f"no MLflow store at {masked(uri)}: the database has no MLflow tables")


def store_name() -> str:
    """The store as a user finds it: the database file's path, or the URI (a password
    in it masked)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return uri.removeprefix("sqlite:///").split("?")[0]
    return masked(uri)
