"""A new local store is a copy of an empty store MLflow made, kept in the user's cache:
never a damaged one."""

import os
import random
import sqlite3

import pytest

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
