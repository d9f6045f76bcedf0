"""Finding a store a user names, and reading what a command needs before MLflow loads:
the store's own path for messages, its experiments (with sqlite3, read only), a client on
a project folder, an mlruns/ folder, an mlflow.db file or a URI.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path
from typing import Any

from experiments.tracking.store import NoStore, holds_mlflow, tracking_uri


def local_experiments() -> set[str] | None:
    """The active experiments' names in the local SQLite store, read with sqlite3, read
    only: a command can refuse an unknown name before importing MLflow (~3 s). None when
    the store is not a local file or cannot be read so (MLflow then says why)."""
    uri = tracking_uri()
    path = Path(uri.removeprefix("sqlite:///").split("?")[0])
    if not uri.startswith("sqlite:///") or not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT name FROM experiments "
                              "WHERE lifecycle_stage = 'active'").fetchall()
    except sqlite3.Error:
        return None
    return {name for (name,) in rows}


def client_for(store: str | Path) -> Any:
    """A reading client on a store named by the user: a project folder (its mlruns/),
    an mlruns/ folder, an mlflow.db file or a tracking URI. NoStore when there is none
    (nothing is created)."""
    from mlflow import MlflowClient

    if "://" in str(store):
        return MlflowClient(str(store))
    path = Path(store).expanduser()
    found = next((p for p in (path / "mlruns" / "mlflow.db", path / "mlflow.db", path)
                  if p.is_file()), None)
    if found is None or not holds_mlflow(found):
        raise NoStore(f"no MLflow store at {path}: give a project folder (with mlruns/), "
                      "its mlruns/ folder, an mlflow.db file or a tracking URI")
    return MlflowClient(f"sqlite:///{found.resolve()}")


def store_name() -> str:
    """The store as a user finds it: the database file's path, or the URI (a password
    in it masked)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return uri.removeprefix("sqlite:///").split("?")[0]
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", uri)
