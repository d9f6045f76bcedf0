"""Every use of Optuna's private API, in one place: a trial's storage id, the storage's
engine and heartbeats, attributes set on a trial other than the running one.
"""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

ORDERED_ATTR = "ordered"  # trial user attr: False once a trial gave up waiting (ordered.py)


def latest(study: optuna.Study, t: FrozenTrial | optuna.Trial) -> FrozenTrial:
    """The trial as the storage has it now."""
    return study._storage.get_trial(t._trial_id)


def is_journal(study: optuna.Study) -> bool:
    # Optuna wraps an RDBStorage in a cache, so an isinstance test for RDBStorage is always
    # false; the journal is not wrapped.
    return isinstance(study._storage, optuna.storages.JournalStorage)


def heartbeat_ages(study: optuna.Study) -> dict[int, float]:
    """Seconds since each RUNNING trial's last heartbeat, by trial number (RDB storage with
    heartbeats; empty for the journal, which has none). Read from Optuna's own table."""
    backend = getattr(study._storage, "_backend", study._storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        return {}
    import sqlalchemy
    from optuna.storages._rdb import models

    ages = {}
    with backend.scoped_session() as session:
        now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
        rows = (session.query(models.TrialModel.number, models.TrialHeartbeatModel.heartbeat)
                .join(models.TrialHeartbeatModel)
                .filter(models.TrialModel.study_id == study._study_id)
                .filter(models.TrialModel.state == TrialState.RUNNING).all())
        for number, beat in rows:
            ages[number] = (now - beat.replace(tzinfo=None)).total_seconds()
    return ages


def native_heartbeat(study: optuna.Study) -> bool:
    """Whether the storage keeps Optuna's own heartbeats (RDB storage, wrapped in a cache).
    Optuna's gRPC proxy does not pass them on, so its workers beat through `beat`."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    return isinstance(study._storage, BaseHeartbeat) and is_heartbeat_enabled(study._storage)


BEAT = "runner.beat"  # trial system attr: the worker's last sign of life (epoch seconds)


def beat(study: optuna.Study, t: FrozenTrial | optuna.Trial) -> None:
    """Record that the worker of running trial `t` is alive."""
    study._storage.set_trial_system_attr(t._trial_id, BEAT, time.time())


def _engine(study: optuna.Study) -> Any:
    storage = study._storage  # an RDB storage is wrapped in Optuna's cache
    return getattr(getattr(storage, "_backend", storage), "engine", None)


def forkable(study: optuna.Study) -> bool:
    """Whether a fork of this process may open the study's storage again: the journal (a
    file) or an RDB; not Optuna's gRPC proxy (its channels cannot cross a fork)."""
    return isinstance(study._storage, optuna.storages.JournalStorage) or \
        _engine(study) is not None


def before_fork(study: optuna.Study) -> None:
    """Close the storage's pooled connections: no fork may share one."""
    if _engine(study) is not None:
        _engine(study).dispose()


def after_fork(study: optuna.Study) -> None:
    """In the fork: let go of the inherited pool without closing what the parent uses."""
    if _engine(study) is not None:
        _engine(study).dispose(close=False)


def set_attr(study: optuna.Study, t: FrozenTrial, key: str, value: Any) -> None:
    """A user attr on any trial of the study (an Optuna `Trial` is only the running one)."""
    study._storage.set_trial_user_attr(t._trial_id, key, value)


def set_failed(study: optuna.Study, t: FrozenTrial) -> None:
    """Fail a trial; UpdateFinishedTrialError when someone finished it first."""
    study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def pop_waiting(study: optuna.Study) -> FrozenTrial | None:
    """Take the next queued trial (RUNNING now, and no one else's), or None."""
    trial_id = study._pop_waiting_trial_id()
    return None if trial_id is None else study._storage.get_trial(trial_id)


def mark_unordered(study: optuna.Study, t: FrozenTrial) -> None:
    """Say on a trial that it decided without waiting for the earlier ones (ordered.py)."""
    study._storage.set_trial_user_attr(t._trial_id, ORDERED_ATTR, False)
