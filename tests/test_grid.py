"""A grid visits every point once: across resumes, with two workers, capped at its size,
and after an allowed change of its points."""

from pathlib import Path

import pytest
from optuna.trial import TrialState

import runner
from helpers import FAST, journal_study, start_merged, sweep_file, sweep_runs, write_sweep


@pytest.mark.slow
def test_a_grid_with_two_workers_visits_every_point_once(tmp_path):
    path = write_sweep(tmp_path, """
name: grid2
method: grid
n_trials: 100
pruner: {type: none}
fixed: {epochs: 1, batch_size: 1000, data.download: false}
parameters:
  seed: {values: [0, 1, 2, 3, 4, 5, 6, 7]}
""")
    proc = start_merged("sweep", str(path), "--workers", "2", cwd=tmp_path)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    assert "8/8 trials counted" in output
    trials = journal_study(tmp_path, "grid2").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == list(range(8))
    assert len({t.user_attrs["worker"] for t in complete}) == 2
    # Anything else is a queued duplicate that was turned away, never a second training.
    for t in trials:
        if t.state != TrialState.COMPLETE:
            assert t.user_attrs["fail_kind"] in ("duplicate", "no_grid_point"), t
    _client, _, children = sweep_runs(tmp_path, "grid2")
    assert sorted(int(r.data.params["seed"]) for r in children) == list(range(8))


@pytest.mark.slow
def test_grid_visits_every_point_once_across_resumes(store):
    path = sweep_file(store, f"""
        name: grid
        method: grid
        n_trials: 3
        pruner: {{type: none}}
        {FAST}
        parameters:
          seed: {{values: [0, 1, 2, 3, 4, 5]}}
        """)
    assert runner.main(["sweep", path]) == 0
    first = {t.params["seed"] for t in journal_study(store, "grid").get_trials()
             if t.state == TrialState.COMPLETE}
    assert len(first) == 3
    assert runner.main(["sweep", path, "--n-trials", "6"]) == 0
    trials = journal_study(store, "grid").get_trials()
    seeds = sorted(t.params["seed"] for t in trials if t.state == TrialState.COMPLETE)
    assert seeds == [0, 1, 2, 3, 4, 5]
    _, _, children = sweep_runs(store, "grid")
    assert sorted(int(r.data.params["seed"]) for r in children) == seeds


@pytest.mark.slow
def test_grid_budget_is_capped_at_the_grid(store, capsys):
    path = sweep_file(store, f"""
        name: cap
        method: grid
        n_trials: 10
        pruner: {{type: none}}
        {FAST}
        parameters:
          learning_rate: {{values: [0.01, 0.1, 0.3]}}
        """)
    assert runner.main(["sweep", path]) == 0
    assert "3/3 trials counted" in capsys.readouterr().out
    trials = journal_study(store, "cap").get_trials()
    assert sorted(t.params["learning_rate"] for t in trials) == [0.01, 0.1, 0.3]


@pytest.mark.slow
def test_a_changed_grid_visits_its_new_points(store, capsys):
    path = sweep_file(store, f"""
        name: regrid
        method: grid
        n_trials: 10
        pruner: {{type: none}}
        {FAST}
        parameters:
          learning_rate: {{values: [0.1, 0.2]}}
          grad_mode: {{values: [has_aux, stop_gradient]}}
        """)
    assert runner.main(["sweep", path]) == 0
    text = Path(path).read_text().replace("  grad_mode: {values: [has_aux, stop_gradient]}\n",
                                          "").replace("batch_size: 1000", "batch_size: 1000, "
                                                      "grad_mode: has_aux")
    changed = sweep_file(store, text, "changed.yaml")
    assert runner.main(["sweep", changed, "--allow-change"]) == 0
    assert "2/2 trials counted" in capsys.readouterr().out
    trials = journal_study(store, "regrid").get_trials()
    new = [t for t in trials if t.state == TrialState.COMPLETE and "grad_mode" not in t.params]
    assert sorted(t.params["learning_rate"] for t in new) == [0.1, 0.2]

