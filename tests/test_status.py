"""`runner.py status`: where a sweep stands, read from its study, writing nothing."""

from __future__ import annotations

import os
import re

import pytest

from helpers import LIVE, database, run_cli


def test_status_of_a_sweep_that_never_ran_is_exit_2(tmp_path):
    (tmp_path / "never.yaml").write_text(LIVE.replace("name: live", "name: never"))
    result = run_cli("status", "never.yaml", cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stderr.strip().count("\n") == 0 and "never.yaml" in result.stderr
    assert "has never run here" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mlruns").exists(), "status wrote something"


def test_status_of_a_bad_file_is_exit_2(tmp_path):
    (tmp_path / "bad.yaml").write_text(LIVE.replace("n_trials: 6", "n_trials: -1"))
    result = run_cli("status", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "bad.yaml" in result.stderr and "n_trials" in \
        result.stderr, result.stderr
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_status_reads_a_sweep_on_postgres(postgres, tmp_path):
    storage = database(postgres, "optuna_status")
    (tmp_path / "pg.yaml").write_text(LIVE.replace("name: live", "name: pgsweep")
                                      .replace("n_trials: 6", "n_trials: 2"))
    done = run_cli("sweep", "pg.yaml", "--storage", storage, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = run_cli("status", "pg.yaml", "--storage", storage, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sweep 'pgsweep' (postgresql" in result.stdout and "2 of 2 trials counted" in \
        result.stdout, result.stdout
    assert "best so far: trial" in result.stdout and "ETA: done" in result.stdout
    empty = database(postgres, "optuna_none")
    missing = run_cli("status", "pg.yaml", "--storage", empty, cwd=tmp_path)
    assert missing.returncode == 2 and "has never run here" in missing.stderr
    import sqlalchemy as sa

    engine = sa.create_engine(empty)
    try:
        assert sa.inspect(engine).get_table_names() == [], "status created Optuna's schema"
    finally:
        engine.dispose()


@pytest.mark.slow
def test_status_and_dry_run_write_no_sqlite_storage(tmp_path):
    (tmp_path / "s.yaml").write_text(LIVE)
    for args in (["status", "s.yaml"], ["sweep", "s.yaml", "--dry-run"]):
        result = run_cli(*args, "--storage", "sqlite:///optuna.db", cwd=tmp_path)
        assert result.returncode == (2 if args[0] == "status" else 0), result
        assert not (tmp_path / "optuna.db").exists(), args
    secret = run_cli("status", "s.yaml", "--storage", "postgresql://u:hunter2@127.0.0.1:1/x",
                     cwd=tmp_path)
    assert secret.returncode == 2 and "u:***@127.0.0.1" in secret.stderr
    assert "hunter2" not in secret.stderr + secret.stdout



def test_the_eta_of_a_stopped_sweep_is_over_the_workers_a_rerun_starts(tmp_path):
    """With no worker at work, the ETA is a rerun's: over one worker per core (or
    RUNNER_WORKERS), no more than trials left. It said '/ 1 worker' of a sweep that had
    run two (review)."""
    (tmp_path / "live.yaml").write_text(LIVE)
    done = run_cli("sweep", "live.yaml", "--n-trials", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    cores = len(os.sched_getaffinity(0))
    auto = run_cli("status", "live.yaml", "--n-trials", "6", cwd=tmp_path,
                   env={"RUNNER_WORKERS": None})
    n = min(cores, 5)
    assert re.search(rf"^ETA of a rerun: about \S+ \(5 trials left x median [0-9.]+s / {n} "
                     rf"worker{'s' * (n > 1)}\)$", auto.stdout, re.M), auto.stdout
    one = run_cli("status", "live.yaml", "--n-trials", "6", cwd=tmp_path,
                  env={"RUNNER_WORKERS": "1"})
    assert re.search(r"^ETA of a rerun: about \S+ \(5 trials left x median [0-9.]+s / 1 "
                     r"worker\)$", one.stdout, re.M), one.stdout
