"""A new local store, made from a copy of one MLflow itself created and migrated.

MLflow creates an SQLite store by running its ~60 Alembic migrations one by one: 1.1 s on
2 cores (plus 0.3 s importing Alembic), 8% of the main job. The first store made on a
machine (for an MLflow version) is created by MLflow as usual, and copied at once, before
anything is in it but MLflow's "Default" experiment, into the user's cache. Every later
new store is that file, copied in 20 ms, with the one thing MLflow writes per store put
right: the Default experiment's artifact location and its times. A cache that cannot be
read or written only means the slow way: MLflow creating the store.

Callers hold the store's creation lock (store.py), so no second process sees the copy
half-made; it is written beside the store and renamed into place. The template is kept
with the SHA-256 of its bytes, and copied only while they match: one overwritten page made
every new store "malformed" (reproduced), and 215 of 232 single-page damages passed a
check of its tables. A template that does not match is removed, and the next store MLflow
creates becomes the template.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
from importlib import metadata
from pathlib import Path

CACHE_ENV = "RUNNER_CACHE"  # the folder for the template; "off" makes every store the slow way


def _template() -> Path | None:
    where = os.environ.get(CACHE_ENV)
    if where == "off":
        return None
    root = Path(where) if where else Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mindspore-sweep-runner"
    return root / f"mlflow-{metadata.version('mlflow')}-store.db"


def from_template(db: Path) -> bool:
    """Make the store `db` from the cached template; False when there is none."""
    template = _template()
    if template is None or not template.is_file():
        return False
    if not _intact(template) or not _looks_made_by_mlflow(template):
        forget(None)  # the next store MLflow creates becomes the template
        return False
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mlflow-", suffix=".db", dir=db.parent)
    except OSError:  # no folder to make it in: MLflow says why, in its own words
        return False
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # as MLflow's own file would be; mkstemp's is 0600
        shutil.copyfile(template, tmp)
        now = int(time.time() * 1000)
        # What MLflow writes for the store it creates: the Default experiment's artifacts
        # under ./mlruns of the working folder, as an absolute path, and its times.
        with contextlib.closing(sqlite3.connect(tmp)) as con, con:
            con.execute("update experiments set artifact_location = ?, creation_time = ?, "
                        "last_update_time = ? where experiment_id = 0",
                        (str(Path.cwd() / "mlruns" / "0"), now, now))
        os.replace(tmp, db)
    except (OSError, sqlite3.Error):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    return True


# Tables any MLflow store has; a file without them (or without one migration version) was
# not made by MLflow, whatever its name.
TABLES = {"alembic_version", "experiments", "runs", "metrics", "latest_metrics", "params",
          "tags", "experiment_tags", "datasets", "inputs"}


def _looks_made_by_mlflow(path: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro",
                                                uri=True)) as con:
            names = {r[0] for r in con.execute("select name from sqlite_master "
                                               "where type = 'table'")}
            versions = con.execute("select version_num from alembic_version").fetchall() \
                if "alembic_version" in names else []
            experiments = con.execute("select name from experiments").fetchall() \
                if "experiments" in names else []
    except sqlite3.Error:
        return False
    return names >= TABLES and len(versions) == 1 and experiments == [("Default",)]


def _digest_of(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(template: Path) -> bool:
    """Whether the template's bytes are those it was kept with (~2 ms for its ~1 MB)."""
    try:
        return _digest_of(template).read_text().strip() == _sha256(template)
    except OSError:
        return False


def forget(db: Path | None) -> None:
    """Remove a store made from a template MLflow could not open, and the template."""
    template = _template()
    for path in (db, template, template and _digest_of(template)):
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def keep_as_template(db: Path) -> None:
    """Copy the store MLflow just created (nothing in it yet) into the cache."""
    template = _template()
    if template is None or template.exists():
        return
    with contextlib.suppress(OSError):
        template.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".store-", suffix=".db", dir=template.parent)
        os.close(fd)
        try:
            shutil.copyfile(db, tmp)
            # The digest first, of the copy itself: a template without its digest, or with
            # another's, is never used.
            _write(_digest_of(template), _sha256(Path(tmp)))
            os.replace(tmp, template)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _write(path: Path, text: str) -> None:
    """A small file, whole or not at all."""
    fd, tmp = tempfile.mkstemp(prefix=".digest-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
