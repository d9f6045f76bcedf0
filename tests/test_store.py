"""The local MLflow store: created once under a lock, from a cached copy of an empty store
MLflow made (never a damaged one), and readable while another process creates it."""

from __future__ import annotations

import fcntl
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, mlflow_client


@pytest.mark.slow
def test_a_reader_waits_for_the_process_creating_the_store(store):
    """A second client that opens a store still being created runs MLflow's migrations
    again and corrupts it for good; readers (compare, ui, predict) wait for the creator."""
    from experiments.tracking.store import client

    client()  # the store exists; now a creator holds the lock as if still migrating
    with open(store / "mlruns" / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reader = subprocess.Popen([sys.executable, str(ROOT / "runner.py"), "compare",
                                   "--experiment", "none"], cwd=store, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(8)  # far longer than the reader needs to start and ask
        assert reader.poll() is None, reader.communicate()
    _out, err = reader.communicate(timeout=60)
    assert reader.returncode == 2 and "no MLflow experiment named 'none'" in err, err


def test_a_template_mlflow_did_not_make_is_replaced(tmp_path, monkeypatch):
    from experiments.tracking import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RUNNER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    from importlib import metadata
    planted = tmp_path / "cache" / f"mlflow-{metadata.version('mlflow')}-store.db"
    with sqlite3.connect(planted) as con:
        con.execute("create table experiments (experiment_id int, x text)")
    monkeypatch.chdir(tmp_path)
    client = store.client()
    assert [e.name for e in client.search_experiments()] == ["Default"]
    with sqlite3.connect(planted) as con:  # replaced by the store MLflow created
        assert len(con.execute("select version_num from alembic_version").fetchall()) == 1


def test_a_template_mlflow_cannot_open_is_replaced(tmp_path, monkeypatch):
    """A template that looks like MLflow's but that MLflow refuses (here: a migration
    version it does not know): the store is created by MLflow after all, in the same
    process, and becomes the template."""
    from experiments.tracking import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RUNNER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    store.client()
    template = next((tmp_path / "cache").glob("mlflow-*-store.db"))
    with sqlite3.connect(template) as con:
        good = con.execute("select version_num from alembic_version").fetchall()
        con.execute("update alembic_version set version_num = 'ffffffffffff'")
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    client = store.client()
    assert [e.name for e in client.search_experiments()] == ["Default"]
    client.create_experiment("after")
    with sqlite3.connect(template) as con:
        assert con.execute("select version_num from alembic_version").fetchall() == good


def test_a_store_from_the_template_is_mlflows_own(tmp_path, monkeypatch):
    from experiments.tracking import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RUNNER_CACHE", str(tmp_path / "cache"))
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        store.client()
    first, second = (tmp_path / n / "mlruns" / "mlflow.db" for n in ("first", "second"))
    template = next((tmp_path / "cache").glob("mlflow-*-store.db"))
    assert _schema(first) == _schema(second) == _schema(template)
    with sqlite3.connect(second) as con:
        assert con.execute("select version_num from alembic_version").fetchall() == \
            sqlite3.connect(first).execute("select version_num from alembic_version").fetchall()
        where = con.execute("select artifact_location from experiments").fetchall()
    assert where == [(str(tmp_path / "second" / "mlruns" / "0"),)]  # as MLflow writes it
    assert first.stat().st_mode == second.stat().st_mode
    client = mlflow_client(tmp_path / "second")
    run = client.create_run(client.create_experiment("e"))
    client.log_metric(run.info.run_id, "x", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"x": 1.0}


def _schema(db: Path) -> list:
    with sqlite3.connect(db) as con:
        return sorted(con.execute("select type, name, sql from sqlite_master"))


def test_no_template_when_the_cache_is_off(tmp_path, monkeypatch):
    from experiments.tracking import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RUNNER_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    store.client()
    assert (tmp_path / "mlruns" / "mlflow.db").exists()
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


PAGE = 4096


@pytest.fixture
def template(tmp_path, monkeypatch):
    """The cache's template, made as the first store on a machine makes it."""
    from experiments.tracking import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RUNNER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "first").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    store.client()
    return next((tmp_path / "cache").glob("mlflow-*-store.db"))


def test_every_single_page_damage_of_the_template_is_caught(tmp_path, template):
    """One overwritten page made every new store 'malformed'; a check of the template's
    tables let 215 of 232 such damages through. Here each page in turn is overwritten:
    the template is refused (and removed) every time, before anything is copied."""
    from experiments.tracking import fresh_store

    good = template.read_bytes()
    digest = template.with_name(template.name + ".sha256")
    kept = digest.read_text()
    rng = random.Random(0)
    pages = len(good) // PAGE
    assert pages > 100
    (tmp_path / "new").mkdir()
    for page in range(pages):
        damaged = bytearray(good)
        damaged[page * PAGE:(page + 1) * PAGE] = rng.randbytes(PAGE)
        template.write_bytes(bytes(damaged))
        digest.write_text(kept)
        db = tmp_path / "new" / "mlflow.db"
        assert fresh_store.from_template(db) is False, page
        assert not db.exists() and not template.exists() and not digest.exists(), page
    template.write_bytes(good)  # as it was: it is used again
    digest.write_text(kept)
    assert fresh_store.from_template(tmp_path / "new" / "mlflow.db") is True


def test_a_damaged_template_is_rebuilt_and_the_new_store_is_whole(tmp_path, template,
                                                                 monkeypatch):
    from experiments.tracking import store

    with open(template, "r+b") as fh:  # the page of the experiments table's rows, say
        fh.seek(PAGE * 3)
        fh.write(os.urandom(PAGE))
    (tmp_path / "second").mkdir()
    monkeypatch.chdir(tmp_path / "second")
    client = store.client()
    client.log_metric(client.create_run(client.create_experiment("e")).info.run_id, "x", 1.0)
    with sqlite3.connect(tmp_path / "second" / "mlruns" / "mlflow.db") as con:
        assert con.execute("pragma integrity_check").fetchall() == [("ok",)]
    with sqlite3.connect(template) as con:  # rebuilt from the store MLflow just made
        assert con.execute("pragma integrity_check").fetchall() == [("ok",)]
        assert con.execute("select name from experiments").fetchall() == [("Default",)]


def test_a_template_without_its_digest_is_not_used(tmp_path, template):
    from experiments.tracking import fresh_store

    template.with_name(template.name + ".sha256").unlink()
    assert fresh_store.from_template(tmp_path / "mlflow.db") is False
    assert not template.exists()
