"""Where the MLflow store lives, and the client on it.

The local default is an SQLite store in `mlruns/mlflow.db` with artifacts in
`mlruns/artifacts` (MLflow 3 refuses a plain file store); `MLFLOW_TRACKING_URI` overrides.
A fresh SQLite store created by two processes at once is corrupted for good, so creation
is serialised with a file lock. Every use of MLflow's private API is in this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import platform
import re
import sqlite3
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from experiments.core.config import UserError
from experiments.runtime.paths import writable_ancestor
from experiments.tracking import fresh_store

MLRUNS = Path("mlruns")
PACKAGES = ("mindspore", "numpy", "mlflow", "optuna", "pandas")


def default_uri(root: Path = MLRUNS) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def _artifact_root() -> str | None:
    """Artifacts go under mlruns/ for the default store; a server or custom URI decides itself."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (MLRUNS / "artifacts").resolve().as_uri()


@contextmanager
def _store_lock() -> Iterator[None]:
    try:
        MLRUNS.mkdir(exist_ok=True)
        fh = open(MLRUNS / ".lock", "a")  # noqa: SIM115 - closed below, after the lock
    except OSError:  # a store someone else owns, read-only here: nobody creates it here
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class NoStore(UserError):
    """A command that only reads found no store to read."""


def holds_mlflow(path: Path) -> bool:
    """Whether a SQLite file holds MLflow's tables (read only; False for any other file)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro",
                                                uri=True)) as db:
            return db.execute("select 1 from sqlite_master where type = 'table' and "
                              "name = 'experiments'").fetchone() is not None
    except sqlite3.Error:  # not a database at all
        return False


def client(create: bool = True):
    """A client on the project's store, creating (and migrating) the store once, under a
    lock. With `create` False (commands that only read) a missing local store is NoStore,
    and nothing is written."""
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # It logs every database error with its traceback before raising it: the runner says
    # what broke in one line (a full disk printed 857 lines of these, measured).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow retries a request to a server 7 times over minutes by default; a server that
    # is gone is then told after ~10 s a request (3 tries), and the sweep stops in one line.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # A tracking server makes the client print "View run ... at" lines at every run end;
    # the sweep prints its own link once.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # A local path as dataset source matches two equivalent source types; harmless.
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
    # No mlflow.set_tracking_uri(): it exports MLFLOW_TRACKING_URI, which would hide from
    # the rest of this process whether the user chose the store.
    uri = tracking_uri()
    local = uri.startswith("sqlite:") and not os.environ.get("MLFLOW_TRACKING_URI")
    if local and not create and not (MLRUNS / "mlflow.db").exists():
        raise NoStore(f"no MLflow store here ({(MLRUNS / 'mlflow.db').resolve()}): nothing has "
                      "been tracked in this folder; run `runner.py sweep` or `train` here first, "
                      "or set MLFLOW_TRACKING_URI")
    named = uri.removeprefix("sqlite:///").split("?")[0] if uri.startswith("sqlite:///") else ""
    if not local and not create and named and named != ":memory:":
        # MLflow would create (and migrate) the file a reader names, or write its schema
        # into any SQLite file: a reader checks first, read-only.
        if not Path(named).exists():
            raise NoStore(f"no MLflow store at {uri} (MLFLOW_TRACKING_URI): the file does not "
                          "exist; nothing has been tracked there")
        if not holds_mlflow(Path(named)):
            raise NoStore(f"no MLflow store at {uri} (MLFLOW_TRACKING_URI): the file is not "
                          "one (it has no MLflow tables)")
    if local and create:
        # Asked of the file system first: on a read-only mlruns/ MLflow retries opening the
        # database for ~2 minutes (its engine's ten tries), then fails (measured). An
        # OSError here says what is wrong in one line (a disk error: exit 1).
        try:
            writable_ancestor(MLRUNS / "mlflow.db")
        except OSError as exc:  # named by the store's folder, not by the probe's
            raise OSError(exc.errno, exc.strerror, str(MLRUNS.resolve())) from None
    if local:
        # Under the lock for readers too: a client on a store that another process is still
        # creating would run MLflow's migrations a second time, and corrupt it for good.
        with _store_lock():
            db = MLRUNS / "mlflow.db"
            copied = not db.exists() and fresh_store.from_template(db)
            created = not copied and not db.exists()
            try:
                c = MlflowClient(uri)
                c.search_experiments(max_results=1)
            except Exception:
                if not copied:
                    raise
                # A template MLflow cannot open (not made by this code, or damaged): gone,
                # with the copy, and MLflow creates the store as if there were none. Its
                # engine for this URI, kept per process, still points at the copy.
                fresh_store.forget(db)
                _forget_engine(uri)
                c, created = MlflowClient(uri), True
                c.search_experiments(max_results=1)
            if created:  # by MLflow's migrations, just now: the template for the next
                fresh_store.keep_as_template(db)
        return c
    return MlflowClient(uri)


def _forget_engine(uri: str) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
    if engine is not None:
        engine.dispose()


def _engine(c: Any) -> Any:
    return getattr(c._tracking_client.store, "engine", None)


def forkable(c: Any) -> bool:
    """Whether a fork of this process may go on using client `c`: a database store, yes;
    a tracking server, no (its HTTP session pool is cached out of reach)."""
    return _engine(c) is not None


def before_fork(c: Any) -> None:
    """Close the pooled connections of `c`: both processes reconnect on their next call."""
    if _engine(c) is not None:
        _engine(c).dispose()


def after_fork(c: Any) -> None:
    """In the fork: let go of the inherited pool without closing what the parent uses."""
    if _engine(c) is not None:
        _engine(c).dispose(close=False)


def experiment_id(c: Any, name: str) -> str:
    """Get or create an experiment; safe when several workers race to create it."""
    from mlflow.exceptions import MlflowException

    found = c.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            c.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        # MLflow's own mark of a model-training experiment. MLflow 3.17.2's UI ignores it
        # when it opens an experiment (checked in Chromium: GenAI overview all the same),
        # hence the `workflowType` in every link printed; other versions read it.
        return c.create_experiment(name, artifact_location=_artifact_root_for(name),
                                   tags={"mlflow.experimentKind": "custom_model_development"})
    except MlflowException:
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _artifact_root_for(name: str) -> str | None:
    root = _artifact_root()
    return None if root is None else f"{root}/{artifact_folder(name)}"


def artifact_folder(name: str) -> str:
    """A folder name for an experiment's artifacts that stays one folder under mlruns/.

    Experiment names are free text in MLflow; in a URI '/' and '..' would climb out of the
    artifact root and '#' or '?' would cut the name short. A name made only of safe
    characters is its own folder; any other gets its unsafe characters replaced and a hash
    of the whole name, so two names never share a folder.
    """
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) and len(name) <= 100:
        return name
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60].lstrip(".") or "experiment"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def server_args(host: str, port: int) -> list[str]:
    """`mlflow server` arguments for the project's store, artifacts served from mlruns/."""
    args = ["server", "--backend-store-uri", tracking_uri(), "--host", host, "--port",
            str(port), "--workers", "1"]
    root = _artifact_root()
    if root:
        args += ["--default-artifact-root", root]
    return args


def metric_history_bulk(client: Any, run_ids: list[str], key: str, max_steps: int) -> list:
    """Every logged point of metric `key` for many runs, in as few requests as the store
    allows: a SQL store answers one query for 500 runs, a tracking server one request per
    100. Either beats one request per run per metric (benchmark section 6)."""
    store = client._tracking_client.store
    points = []
    if hasattr(store, "get_metric_history_bulk"):
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start : start + 500]
            points += store.get_metric_history_bulk(chunk, key, max_steps * len(chunk))
        return points
    for start in range(0, len(run_ids), 100):
        points += store.get_metric_history_bulk_interval(run_ids[start : start + 100], key,
                                                         max_steps, None, None)
    return points


@functools.cache
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out
