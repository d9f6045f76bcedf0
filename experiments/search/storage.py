"""The study storage: Optuna's journal file in `mlruns/optuna/` by default, built for
several processes on one machine (SQLite is not); `--storage postgresql://...` uses the RDB
storage with heartbeats, so trials of a worker that died on another machine are failed and
retried by the survivors. Public Optuna API only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from experiments.core.config import ConfigError
from experiments.runtime.retry import retry

# A worker that stops beating for GRACE_S is taken for dead (RDB storage).
HEARTBEAT_S = int(os.environ.get("RUNNER_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("RUNNER_GRACE_S", "30"))

optuna.logging.set_verbosity(optuna.logging.ERROR)


def open_storage(url: str | None, root: Path,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None],
                 create: bool = True) -> Any:
    """The study storage: a journal file by default, an RDB (with heartbeats) for URLs.

    `on_stale` is called for each trial the heartbeat check failed. With `create` False,
    None where the journal file does not exist yet (no study can).
    """
    try:
        if not url or url.startswith("journal:") or url.endswith(".log"):
            path = Path(url.removeprefix("journal:")) if url else root / "optuna" / "journal.log"
            if not create and not path.exists():
                return None
            path.parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if not create and not retry(lambda: _has_studies(url)):
            return None
        return retry(lambda: _rdb(url, on_stale))
    except Exception as exc:  # the driver's errors are of many kinds
        raise unusable(url, exc) from None


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
    from experiments.search.options import masked

    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return ConfigError(masked(f"--storage {url}: cannot open the study storage "
                              f"({type(exc).__name__}: {first})"))
