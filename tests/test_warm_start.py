"""`warm_start:` a new sweep begins with an earlier study's best configurations that fit
its space, each queued once; an unknown study is refused before anything is written."""

import subprocess
import sys

import optuna
import pytest

import runner
from helpers import REPEATS, ROOT, journal_study, mlflow_client, sweep_runs


@pytest.mark.slow
def test_warm_start_queues_the_earlier_best_that_fit(store, capsys):
    earlier = """
name: early
method: random
n_trials: 5
seed: 2
pruner: {type: none}
fixed: {epochs: 1, batch_size: 256, data.download: false}
parameters:
  learning_rate: {distribution: log_uniform_values, min: 0.01, max: 0.5}
"""
    (store / "early.yaml").write_text(earlier)
    assert runner.main(["sweep", "early.yaml"]) == 0
    past = sorted((t for t in journal_study(store, "early").get_trials()),
                  key=lambda t: t.value, reverse=True)
    top3 = past[:3]
    # This sweep's range leaves out the highest rate of the earlier three (cut just below).
    cut = max(top3, key=lambda t: t.params["learning_rate"])
    high = cut.params["learning_rate"] * 0.999
    low = min(t.params["learning_rate"] for t in past) * 0.5
    later = f"""
name: later
method: tpe
n_trials: 3
seed: 0
pruner: {{type: none}}
warm_start: {{from: early.yaml, top: 3}}
fixed: {{epochs: 1, batch_size: 256, data.download: false}}
parameters:
  learning_rate: {{distribution: log_uniform_values, min: {low}, max: {high}}}
"""
    (store / "later.yaml").write_text(later)
    capsys.readouterr()
    fits = [t for t in top3 if low <= t.params["learning_rate"] <= high]
    assert runner.main(["sweep", "later.yaml"]) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert f"warm start: trial {cut.number} of 'early' skipped: learning_rate=" in out
    assert len(fits) == 2
    trials = journal_study(store, "later").get_trials()
    warm = [t for t in trials if "warm_start_from" in t.user_attrs]
    assert [t.user_attrs["warm_start_from"] for t in warm] == [f"early#{t.number}" for t in fits]
    assert [t.params["learning_rate"] for t in warm] == [t.params["learning_rate"]
                                                         for t in fits]
    assert warm and warm[0].number == 0, (out, [(t.number, t.value, t.params) for t in past])
    _, _, children = sweep_runs(store, "later")
    tagged = {r.data.tags.get("warm_start_from") for r in children} - {None}
    assert tagged == {f"early#{t.number}" for t in fits}
    # Rerun with a bigger budget: nothing is queued twice.
    assert runner.main(["sweep", "later.yaml", "--n-trials", "5"]) == 0
    again = journal_study(store, "later").get_trials()
    origins = [t.user_attrs["warm_start_from"] for t in again if "warm_start_from" in t.user_attrs]
    assert sorted(origins) == sorted(set(origins)) and len(origins) == len(fits)


@pytest.mark.slow
def test_an_unknown_warm_start_study_is_refused_before_anything_is_written(store):
    (store / "tiny_first.yaml").write_text(REPEATS.replace("repeats: 3\n", "").replace(
        "n_trials: 2", "n_trials: 1"))
    assert runner.main(["sweep", "tiny_first.yaml"]) == 0
    client = mlflow_client(store)
    before = [e.name for e in client.search_experiments()]
    (store / "warm.yaml").write_text(REPEATS.replace("name: seeds", "name: warm").replace(
        "repeats: 3", "warm_start: {from: nowhere}"))
    proc = subprocess.run([sys.executable, str(ROOT / "runner.py"), "sweep", "warm.yaml"],
                          cwd=store, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "warm_start.from: no study 'nowhere'" in proc.stderr and "seeds" in proc.stderr
    assert [e.name for e in client.search_experiments()] == before
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(store / "mlruns" / "optuna" / "journal.log")))
    assert optuna.get_all_study_names(storage) == ["seeds"]


@pytest.mark.slow
def test_a_warm_start_never_places_a_quantile_through_another_law(store, capsys):
    """Every quantile-drawn law is Optuna's FloatDistribution(0, 1): the same quantile
    under another law is another value, so such a trial is skipped, not mistrained."""
    earlier = REPEATS.replace("repeats: 3\n", "").replace("name: seeds", "name: qa").replace(
        "{distribution: log_uniform_values, min: 0.05, max: 0.3}",
        "{distribution: q_log_uniform_values, min: 0.01, max: 0.1, q: 0.01}")
    (store / "qa.yaml").write_text(earlier)
    assert runner.main(["sweep", "qa.yaml"]) == 0
    later = earlier.replace("name: qa", "name: qb\nwarm_start: {from: qa, top: 2}").replace(
        "min: 0.01, max: 0.1, q: 0.01", "min: 0.5, max: 5.0, q: 0.5")
    (store / "qb.yaml").write_text(later)
    capsys.readouterr()
    assert runner.main(["sweep", "qb.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("is drawn through its quantile, from another law") == 2, out
    same = earlier.replace("name: qa", "name: qc\nwarm_start: {from: qa, top: 2}")
    (store / "qc.yaml").write_text(same)
    assert runner.main(["sweep", "qc.yaml", "--n-trials", "2"]) == 0
    placed = sorted(t.user_attrs["value.learning_rate"]
                    for t in journal_study(store, "qc").get_trials())
    best = sorted(journal_study(store, "qa").get_trials(), key=lambda t: t.value)[::-1][:2]
    assert placed == sorted(t.user_attrs["value.learning_rate"] for t in best)

