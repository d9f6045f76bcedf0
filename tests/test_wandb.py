"""W&B sweep files run as written: every key and distribution of W&B's sweep reference,
checked against W&B's own definitions (its `params.py` samples `ppf(u)`, u uniform)."""

import math
import statistics
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest

import runner
from experiments.search.spec import sweepfile
from experiments.search.spec.space import suggest
from experiments.search.spec.sweepfile import SweepError
from experiments.search.study import samplers
from helpers import ROOT, journal_study, sweep_runs

DRAWS = 2000


def spec_of(tmp_path, text: str, name: str = "w.yaml") -> sweepfile.SweepSpec:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return sweepfile.load(path)


def draws(spec: sweepfile.SweepSpec, n: int = DRAWS) -> list[dict]:
    """n configs from the sweep's own sampling path, with Optuna's random sampler."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(suggest(trial, spec.parameters))
        study.tell(trial, 0.0)
    return out


def one(tmp_path, law: str, key: str = "learning_rate") -> list:
    spec = spec_of(tmp_path, f"""
        method: random
        metric: {{name: test_loss}}
        parameters:
          {key}: {law}
        """)
    return [d[key] for d in draws(spec)]


def log_spaced(values: list[float], low: float, high: float) -> None:
    """As many draws below the geometric middle as above it, and a quarter per quarter
    of the log range."""
    logs = np.log(values)
    quarters = np.histogram(logs, bins=4, range=(math.log(low), math.log(high)))[0] / len(logs)
    assert np.all(np.abs(quarters - 0.25) < 0.05), quarters


# --- every distribution, thousands of draws ---------------------------------------------


def test_uniform_and_int_uniform(tmp_path):
    values = one(tmp_path, "{distribution: uniform, min: 0.01, max: 0.09}")
    assert min(values) >= 0.01 and max(values) <= 0.09
    assert abs(statistics.mean(values) - 0.05) < 0.002
    epochs = one(tmp_path, "{distribution: int_uniform, min: 1, max: 4}", "epochs")
    assert set(epochs) == {1, 2, 3, 4} and all(isinstance(v, int) for v in epochs)
    counts = np.bincount(epochs)[1:] / len(epochs)
    assert np.all(np.abs(counts - 0.25) < 0.04)


def test_q_uniform_draws_as_wandb_rounds(tmp_path):
    """W&B: round(U(min, max) / q) * q, so 16..256 by 32 gives 32, 64, ..., 256 (never
    16 + k*32), the inner values twice as often as the ends."""
    values = one(tmp_path, "{distribution: q_uniform, min: 16, max: 256, q: 32}", "batch_size")
    assert set(values) == {32, 64, 96, 128, 160, 192, 224, 256}
    freq = {v: values.count(v) / len(values) for v in set(values)}
    assert abs(freq[256] - 16 / 240) < 0.02 and abs(freq[128] - 32 / 240) < 0.03
    assert all(isinstance(v, int) for v in values)
    rates = one(tmp_path, "{distribution: q_uniform, min: 0.1, max: 0.5, q: 0.05}")
    # W&B's own values: round(x / q) * q in floating point, 0.15000000000000002 included.
    assert set(rates) <= {k * 0.05 for k in range(2, 11)}
    assert 3 * 0.05 in rates and 0.15 not in rates


@pytest.mark.parametrize("law, low, high", [
    ("{distribution: log_uniform_values, min: 1e-4, max: 1e-1}", 1e-4, 1e-1),
    ("{distribution: inv_log_uniform_values, min: 1e-4, max: 1e-1}", 1e-4, 1e-1),
    # W&B: min and max are natural-log exponents; inv: log(1/X) is uniform on [min, max].
    ("{distribution: log_uniform, min: -9.21, max: -2.3}", math.exp(-9.21), math.exp(-2.3)),
    ("{distribution: inv_log_uniform, min: 2.3, max: 9.21}", math.exp(-9.21), math.exp(-2.3)),
])
def test_log_families_are_log_spaced(tmp_path, law, low, high):
    values = one(tmp_path, law)
    assert min(values) >= low * (1 - 1e-9) and max(values) <= high * (1 + 1e-9)
    log_spaced(values, low, high)


@pytest.mark.parametrize("law, q", [
    ("{distribution: q_log_uniform_values, min: 1.0e-3, max: 1.0, q: 0.001}", 0.001),
    ("{distribution: q_log_uniform, min: -6.9, max: 0.0, q: 0.001}", 0.001),
])
def test_quantised_log_families(tmp_path, law, q):
    values = one(tmp_path, law)
    assert all(abs(v / q - round(v / q)) < 1e-6 for v in values)
    assert min(values) >= 0.001 and max(values) <= 1.0
    assert sum(v < 0.0316 for v in values) / len(values) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("law, mean, sd, positive", [
    ("{distribution: normal, mu: 0.05, sigma: 0.01}", 0.05, 0.01, False),
    ("{distribution: log_normal, mu: -3.0, sigma: 0.5}",
     math.exp(-3.0 + 0.125), math.sqrt((math.exp(0.25) - 1) * math.exp(-6 + 0.25)), True),
    ("{distribution: beta, a: 2, b: 5}", 2 / 7, math.sqrt(10 / (49 * 8)), True),
])
def test_normal_and_beta_families_have_their_mean_and_spread(tmp_path, law, mean, sd,
                                                             positive):
    values = one(tmp_path, law)
    se = sd / math.sqrt(len(values))
    assert abs(statistics.mean(values) - mean) < 4 * se
    assert statistics.stdev(values) == pytest.approx(sd, rel=0.08)
    if positive:
        assert min(values) > 0


def test_quantised_normal_families(tmp_path):
    values = one(tmp_path, "{distribution: q_normal, mu: 128, sigma: 30, q: 16}", "batch_size")
    assert all(v % 16 == 0 and isinstance(v, int) for v in values)
    assert abs(statistics.mean(values) - 128) < 3
    log_normal = one(tmp_path, "{distribution: q_log_normal, mu: 4.5, sigma: 0.3, q: 8}",
                     "batch_size")
    assert all(v % 8 == 0 for v in log_normal)
    assert statistics.median(log_normal) == pytest.approx(math.exp(4.5), rel=0.05)
    beta = one(tmp_path, "{distribution: q_beta, a: 2, b: 2, q: 1}", "seed")
    assert set(beta) == {0, 1} and beta.count(0) / len(beta) == pytest.approx(0.5, abs=0.04)


def test_probabilities_weight_the_values(tmp_path):
    values = one(tmp_path, "{values: [32, 64, 128], probabilities: [0.7, 0.2, 0.1]}",
                 "batch_size")
    for v, p in ((32, 0.7), (64, 0.2), (128, 0.1)):
        assert values.count(v) / len(values) == pytest.approx(p, abs=0.03)


# --- defaults, nesting, refusals ---------------------------------------------------------


def test_laws_without_a_distribution_follow_wandbs_defaults(tmp_path):
    spec = spec_of(tmp_path, """
        method: random
        metric: {name: test_loss}
        parameters:
          batch_size: {values: [32, 64]}
          seed: {value: 3}
          epochs: {min: 1, max: 3}
          learning_rate: {min: 0.01, max: 0.1}
        """)
    laws = {p.key: p.distribution for p in spec.parameters}
    assert laws == {"batch_size": "categorical", "seed": "constant", "epochs": "int_uniform",
                    "learning_rate": "uniform"}


def test_nested_parameters_are_dotted_config_keys(tmp_path):
    spec = spec_of(tmp_path, """
        method: grid
        metric: {name: test_loss}
        parameters:
          data:
            parameters:
              eval_batch_size: {values: [500, 1000]}
          learning_rate: {value: 0.1}
        """)
    assert [p.key for p in spec.parameters] == ["data.eval_batch_size", "learning_rate"]
    assert sorted(d["data.eval_batch_size"] for d in spec.grid_points()) == [500, 1000]


def test_grid_takes_int_uniform_and_q_uniform_as_wandb_does(tmp_path):
    spec = spec_of(tmp_path, """
        method: grid
        metric: {name: test_loss}
        parameters:
          epochs: {min: 1, max: 3}
          batch_size: {distribution: q_uniform, min: 32, max: 128, q: 32}
        """)
    points = spec.grid_points()
    # W&B: range(min, max + 1) and numpy.arange(min, max, q) (max itself excluded).
    assert sorted({p["epochs"] for p in points}) == [1, 2, 3]
    assert sorted({p["batch_size"] for p in points}) == [32, 64, 96]
    assert len(points) == 9


@pytest.mark.parametrize("text, where, says", [
    ("parameters:\n  lr: {values: [0.1]}\n", "parameters.lr", "did you mean learning_rate?"),
    ("metric: {name: val_loss, goal: minimize}\nparameters:\n  seed: {values: [1]}\n",
     "metric.name", "did you mean test_loss?"),
    ("metric: {name: test_accuracy}\nparameters:\n  seed: {values: [1]}\n", "metric.goal",
     "goal: maximize"),
    ("metric: {name: test_loss}\nrun_cap: 5\nn_trials: 6\nparameters:\n  seed: {values: [1]}\n",
     "run_cap", "give one of them"),
    ("metric: {name: test_loss}\npruner: {type: median}\nearly_terminate: {type: hyperband, "
     "min_iter: 1}\nparameters:\n  seed: {values: [1]}\n", "early_terminate", "give one"),
    ("metric: {name: test_loss}\nearly_terminate: {type: hyperband, max_iter: 9}\n"
     "parameters:\n  seed: {values: [1]}\n", "early_terminate.s", "max_iter with s"),
    ("method: grid\nmetric: {name: test_loss}\nparameters:\n  batch_size: {values: [32, 64], "
     "probabilities: [0.5, 0.5]}\n", "parameters.batch_size", "without probabilities"),
    ("metric: {name: test_loss}\nparameters:\n  batch_size: {values: [32, 64], probabilities: "
     "[0.5, 0.6]}\n", "parameters.batch_size.probabilities", "sum to 1"),
    ("metric: {name: test_loss}\nparameters:\n  epochs: {distribution: normal, mu: 3, "
     "sigma: 1}\n", "parameters.epochs.distribution", "is an integer"),
    ("metric: {name: test_loss}\nparameters:\n  learning_rate: {distribution: normal, mu: 0.1,"
     " q: 0.1}\n", "parameters.learning_rate.q", "normal does not take q"),
    ("metric: {name: test_loss}\nparameters:\n  seed: {values: [1]}\n  seed: {values: [2]}\n",
     "line 4", "given twice"),
    ("metric: {name: test_loss}\nmetrics: [{name: a}, {name: b}]\nparameters:\n  seed: "
     "{values: [1]}\n", "metrics", "multi-objective"),
])
def test_mistakes_are_one_line_naming_the_key(tmp_path, monkeypatch, capsys, text, where,
                                              says):
    path = tmp_path / "w.yaml"
    path.write_text(text if "method:" in text else text + "method: random\n")  # W&B needs it
    monkeypatch.chdir(tmp_path)
    assert runner.main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and where in err[0] and says in err[0], err


def test_yaml_as_people_write_it(tmp_path):
    """1e-5 (text in YAML 1.1, a known W&B bug), CRLF line endings, comments, any order."""
    spec = spec_of(tmp_path, "method: random\r\nparameters:\r\n  learning_rate:\r\n"
                             "    max: 1e-1  # top\r\n    distribution: log_uniform_values\r\n"
                             "    min: 1e-5\r\n"
                             "metric: {goal: minimize, name: test_loss}\r\n")
    (p,) = spec.parameters
    assert (p.low, p.high) == (1e-5, 0.1)


# --- what each W&B key does ---------------------------------------------------------------


def test_bayes_is_wandbs_own_search(tmp_path):
    from experiments.search.study.wandb_bayes import WandbBayesSampler

    spec = spec_of(tmp_path, "method: bayes\nmetric: {name: test_loss}\nparameters:\n"
                             "  learning_rate: {min: 0.01, max: 0.1}\n")
    study = optuna.create_study(sampler=samplers.sampler(spec))
    study.ask()
    assert isinstance(study.sampler._inner, WandbBayesSampler)


@pytest.mark.slow
def test_a_pure_wandb_file_runs_end_to_end(store, capsys):
    shipped = ROOT / "sweeps" / "wandb_bayes_hyperband.yaml"
    assert runner.main(["sweep", str(shipped), "--n-trials", "3"]) == 0
    captured = capsys.readouterr()
    assert "program: recorded on the parent run, not run" in captured.err.splitlines()[0]
    trials = journal_study(store, "wandb_bayes_hyperband").get_trials()
    assert len(trials) == 3
    _client, parents, children = sweep_runs(store, "wandb_bayes_hyperband")
    assert parents[0].data.tags["wandb.program"] == "train.py"
    for run in children:
        t = trials[int(run.data.tags["trial"])]
        assert float(run.data.params["learning_rate"]) == t.user_attrs["value.learning_rate"]


def test_project_target_and_recorded_keys(store, capsys):
    path = store / "w.yaml"
    path.write_text(textwrap.dedent("""
        name: targeted
        project: digits
        entity: a-team
        description: stop at the first decent model
        command: [python, train.py, --epochs, "1"]
        method: random
        run_cap: 20
        metric: {name: test_accuracy, goal: maximize, target: 0.05}
        parameters:
          learning_rate: {distribution: q_uniform, min: 0.05, max: 0.15, q: 0.05}
          epochs: {value: 1}
          batch_size: {value: 500}
        """))
    assert runner.main(["sweep", str(path), "--set", "data.download=false"]) == 0
    assert "reached metric.target" in capsys.readouterr().out
    _client, parents, children = sweep_runs(store, "digits")  # the experiment is the project
    assert len(children) == 1  # the first trial reached 0.05; none started after it
    tags = parents[0].data.tags
    assert parents[0].info.status == "FINISHED" and tags["end_reason"] == "target"
    assert tags["wandb.entity"] == "a-team" and tags["wandb.command"].startswith('["python"')
    assert "\nstop at the first decent model\n" in tags["mlflow.note.content"]
    value = journal_study(store, "targeted").get_trials()[0].user_attrs["value.learning_rate"]
    assert value in (0.05, 0.1, 0.15)
    assert children[0].data.params["learning_rate"] == str(value)
    assert tags["best.learning_rate"] == str(value)


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parent /
                                                        "wandb_files").glob("*.yaml")))
def test_wandb_files_written_from_the_documentation_load(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    path = Path(__file__).parent / "wandb_files" / name
    assert runner.main(["sweep", str(path), "--dry-run"]) == 0, capsys.readouterr().err
    assert "configs a new study trains" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_grid_over_int_uniform_and_q_uniform_trains_its_points(store):
    path = store / "g.yaml"
    path.write_text(textwrap.dedent("""
        method: grid
        metric: {name: test_loss}
        fixed: {data.download: false, batch_size: 1000}
        parameters:
          epochs: {min: 1, max: 2}
          learning_rate: {distribution: q_uniform, min: 0.05, max: 0.2, q: 0.05}
        """))
    assert runner.main(["sweep", str(path)]) == 0
    trials = journal_study(store, "g").get_trials()
    trained = sorted((t.params["epochs"], t.params["learning_rate"]) for t in trials)
    # W&B's grid is numpy.arange(min, max, q): with float steps it reaches 0.2 here
    # (0.05 + 3 * 0.05 falls a hair below 0.2), and so does this runner's.
    points = np.arange(0.05, 0.2, 0.05).tolist()  # W&B's own: 0.15000000000000002 too
    assert points == [0.05, 0.1, 0.15000000000000002, 0.2]
    assert trained == [(e, lr) for e in (1, 2) for lr in points]
    _, _, children = sweep_runs(store, "g")
    assert sorted((int(r.data.params["epochs"]), float(r.data.params["learning_rate"]))
                  for r in children) == trained


# --- found by a hostile review, each reproduced first --------------------------------------


def test_a_q_uniform_grid_is_numpys_arange(tmp_path):
    spec = spec_of(tmp_path, """
        method: grid
        metric: {name: test_loss}
        parameters:
          learning_rate: {distribution: q_uniform, min: 0.05, max: 0.5, q: 0.1}
        """)
    # W&B's grid: numpy.arange(min, max, q).tolist(), float steps as arange gives them.
    assert sorted(p["learning_rate"] for p in spec.grid_points()) == \
        np.arange(0.05, 0.5, 0.1).tolist()
    assert sorted(p["learning_rate"] for p in spec.grid_points())[1] == 0.15000000000000002
    spec = spec_of(tmp_path, """
        method: grid
        metric: {name: test_loss}
        parameters:
          learning_rate: {distribution: q_uniform, min: 1.0, max: 1.3, q: 0.1}
        """)  # arange's float steps land a hair below max, so max + a hair is a point
    assert sorted(p["learning_rate"] for p in spec.grid_points()) == [
        1.0, 1.1, 1.2000000000000002, 1.3000000000000003]
    spec = spec_of(tmp_path, """
        method: grid
        metric: {name: test_loss}
        parameters:
          learning_rate: {distribution: q_uniform, min: 0.6, max: 3.6, q: 1}
        """)
    assert sorted(p["learning_rate"] for p in spec.grid_points()) == [0.6, 1.6, 2.6]
    with pytest.raises(SweepError, match=r"grid value 0.*batch_size"):
        spec_of(tmp_path, "method: grid\nmetric: {name: test_loss}\nparameters:\n"
                          "  batch_size: {distribution: q_uniform, min: 0.5, max: 3, q: 1}\n")


@pytest.mark.parametrize("law", ["{distribution: q_log_uniform, min: 32, max: 1024, q: 32}",
                                 "{distribution: log_uniform, min: 0, max: 1000}",
                                 "{distribution: inv_log_uniform, min: -1000, max: 1}"])
def test_exponent_laws_that_overflow_are_refused(tmp_path, law):
    key = "batch_size" if "q_log" in law else "learning_rate"
    with pytest.raises(SweepError, match="natural-log exponents"):
        spec_of(tmp_path, f"method: random\nmetric: {{name: test_loss}}\nparameters:\n"
                          f"  {key}: {law}\n")


def test_yaml_merge_keys_and_anchors(tmp_path):
    spec = spec_of(tmp_path, """
        method: random
        metric: {name: test_loss}
        parameters:
          batch_size: &bs
            values: [500, 1000]
          data:
            parameters:
              eval_batch_size:
                <<: *bs
        """)
    assert [p.values for p in spec.parameters] == [(500, 1000), (500, 1000)]


def test_one_key_given_dotted_and_nested_is_refused(tmp_path):
    with pytest.raises(SweepError, match=r"data\.eval_batch_size is given twice"):
        spec_of(tmp_path, """
            method: random
            metric: {name: test_loss}
            parameters:
              data.eval_batch_size: {values: [500, 600]}
              data:
                parameters:
                  eval_batch_size: {values: [700, 800]}
            """)


def test_a_beta_law_must_fit_its_key(tmp_path, monkeypatch, capsys):
    with pytest.raises(SweepError, match=r"smallest value, 0.*epochs"):
        spec_of(tmp_path, "method: random\nmetric: {name: test_loss}\nparameters:\n"
                          "  epochs: {distribution: q_beta, a: 2, b: 2, q: 1}\n")
    # Unbounded laws are accepted; the dry run shows a draw out of range as failing.
    path = tmp_path / "n.yaml"
    path.write_text("method: random\nmetric: {name: test_loss}\nseed: 3\nparameters:\n"
                    "  epochs: {distribution: q_normal, mu: 1, sigma: 2, q: 1}\n")
    monkeypatch.chdir(tmp_path)
    assert runner.main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "fails its trial=config key 'epochs'" in out
    assert "the first 3 configs" in out


def test_dry_run_after_the_target_is_reached(store, capsys):
    path = store / "t.yaml"
    path.write_text("method: random\nrun_cap: 3\nmetric: {name: test_loss, goal: minimize, "
                    "target: 100}\nparameters:\n  epochs: {value: 1}\n  batch_size: {value: 1000}"
                    "\n  learning_rate: {min: 0.01, max: 0.1}\n")
    assert runner.main(["sweep", str(path), "--set", "data.download=false"]) == 0
    capsys.readouterr()
    assert runner.main(["sweep", str(path), "--set", "data.download=false", "--dry-run"]) == 0
    assert "a trial reached metric.target: a rerun trains nothing" in capsys.readouterr().out


@pytest.mark.parametrize("typed, meant", [("inv_log_uniform_value", "inv_log_uniform_values"),
                                          ("log_uniform_value", "log_uniform_values"),
                                          ("q_log_uniform_value", "q_log_uniform_values")])
def test_the_closest_distribution_is_suggested(tmp_path, typed, meant):
    with pytest.raises(SweepError, match=f"did you mean {meant}\\?"):
        spec_of(tmp_path, f"method: random\nmetric: {{name: test_loss}}\nparameters:\n"
                          f"  learning_rate: {{distribution: {typed}, min: 0.001, max: 0.1}}\n")


def test_a_wandb_file_without_early_terminate_is_not_pruned(tmp_path):
    spec = spec_of(tmp_path, "program: train.py\nmethod: bayes\nmetric: {name: test_loss}\n"
                             "parameters:\n  learning_rate: {min: 0.01, max: 0.1}\n")
    assert spec.pruner.type == "none"
    own = spec_of(tmp_path, "method: random\nmetric: {name: test_loss}\nparameters:\n"
                            "  seed: {values: [1]}\n")
    assert own.pruner.type == "none"  # nor is a file of this runner's that does not ask


def test_n_trials_replaces_run_cap_in_what_the_dry_run_says(tmp_path, monkeypatch, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("method: random\nrun_cap: 3\nmetric: {name: test_loss}\nparameters:\n"
                    "  seed: {values: [1, 2]}\n")
    monkeypatch.chdir(tmp_path)
    assert runner.main(["sweep", str(path), "--n-trials", "7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "budget 7 trials" in out and "run_cap: 3 -> replaced by --n-trials 7" in out


def test_repeated_values_weight_a_draw(tmp_path):
    values = one(tmp_path, "{values: [512, 512, 1024]}", "batch_size")
    assert values.count(512) / len(values) == pytest.approx(2 / 3, abs=0.04)


def test_a_name_taken_from_the_file_is_blamed_on_the_file(tmp_path):
    with pytest.raises(SweepError, match="the file gives no `name`"):
        spec_of(tmp_path, "metric: {name: test_loss}\nparameters:\n  seed: {values: [1]}\n",
                "it's.yaml")


def test_a_json_sweep_file_names_its_experiment(tmp_path):
    from experiments.search.compare import experiment_name

    path = tmp_path / "s.json"
    path.write_text('{"project": "p1", "method": "random", "metric": {"name": "test_loss"}, '
                    '"parameters": {"seed": {"values": [1]}}}')
    assert experiment_name(str(path)) == "p1"


def test_a_project_change_is_refused(store, capsys):
    path = store / "p.yaml"
    text = ("project: projA\nmethod: random\nrun_cap: 1\nmetric: {name: test_loss}\n"
            "parameters:\n  learning_rate: {min: 0.01, max: 0.05}\n  epochs: {value: 1}\n"
            "  batch_size: {value: 1000}\n")
    path.write_text(text)
    assert runner.main(["sweep", str(path), "--set", "data.download=false"]) == 0
    path.write_text(text.replace("projA", "projB"))
    capsys.readouterr()
    for extra in ([], ["--allow-change"]):
        assert runner.main(["sweep", str(path), "--set", "data.download=false", *extra]) == 2
        assert "project: projA -> projB" in capsys.readouterr().err


@pytest.mark.slow
def test_sweeps_sharing_a_project_keep_their_own_parent_best_and_runs(store, capsys):
    """Two sweeps with one W&B `project` share its experiment, not a parent run: each has
    its own parent, description, best run (what `predict --model best:` loads) and rows."""
    from experiments.search import compare
    from experiments.search.runs import parent
    from experiments.search.spec.sweepfile import load
    from experiments.tracking import views
    from experiments.tracking.store import client as make_client

    body = """
        project: shared
        method: grid
        fixed: {{epochs: 1, batch_size: 500, data.download: false}}
        metric: {{name: {metric}, goal: {goal}}}
        parameters:
          learning_rate: {{values: [{lrs}]}}
        """
    for name, metric, goal, lrs in (("sweep_a", "test_accuracy", "maximize", "0.1, 0.3"),
                                    ("sweep_b", "test_loss", "minimize", "0.01, 0.02")):
        (store / f"{name}.yaml").write_text(f"name: {name}" + textwrap.dedent(
            body.format(metric=metric, goal=goal, lrs=lrs)))
        assert runner.main(["sweep", f"{name}.yaml", "--quiet"]) == 0
        # The summary's link opens this sweep's view: its runs, not its neighbour's.
        assert f"viewStateShareKey={views.key(name, 'runs')}" in capsys.readouterr().out
        assert view_filter(name) == f"tags.role LIKE '%' and tags.sweep = '{name}'"
    _client, parents, children = sweep_runs(store, "shared")
    assert sorted(p.data.tags["sweep"] for p in parents) == ["sweep_a", "sweep_b"]
    assert len(children) == 4
    for p in parents:
        mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == p.info.run_id]
        assert {c.data.tags["sweep"] for c in mine} == {p.data.tags["sweep"]}, p.data.tags
        assert f"Sweep `{p.data.tags['sweep']}`" in p.data.tags["mlflow.note.content"]
        best = parent.best_run_id(make_client(), load(f"{p.data.tags['sweep']}.yaml"))
        assert best == p.data.tags["best_run_id"] and best in {c.info.run_id for c in mine}
    frame = compare.runs("sweep_a.yaml", make_client())
    assert sorted(frame["learning_rate"]) == [0.1, 0.3]
    assert compare.sweep_metric("shared", make_client(), "sweep_b") == ("test_loss", True)
    from experiments.tracking import ui

    lines = ui.experiment_lines(make_client(), "http://ui")
    assert len(lines) == 2 and lines[0].startswith("shared (sweep 'sweep_b'): http://ui/")
    assert lines[0].endswith(f"viewStateShareKey={views.key('sweep_b', 'runs')}")
    assert lines[1].endswith(f"viewStateShareKey={views.key('sweep_a', 'runs')}")
    # A sweep named like the experiment it shares is filtered too.
    (store / "shared.yaml").write_text("name: shared" + textwrap.dedent(
        body.format(metric="test_accuracy", goal="maximize", lrs="0.2")).replace(
        "project: shared\n", ""))
    assert runner.main(["sweep", "shared.yaml", "--quiet"]) == 0
    assert f"viewStateShareKey={views.key('shared', 'runs')}" in capsys.readouterr().out
    lines = ui.experiment_lines(make_client(), "http://ui")
    assert len(lines) == 3 and all("viewStateShareKey=runner-runs-" in line for line in lines)
    assert all(view_filter(n).endswith(f"tags.sweep = '{n}'")
               for n in ("sweep_a", "sweep_b", "shared"))


def view_filter(sweep: str) -> str:
    """The runs filter of a sweep's view, as kept on the experiment `shared` (in the
    store of the current folder)."""
    import json

    from experiments.tracking import views
    from experiments.tracking.store import client

    exp = client().get_experiment_by_name("shared")
    return json.loads(exp.tags[views.PREFIX + views.key(sweep, "runs")])["searchFilter"]


def test_one_value_is_recorded_alike_everywhere(tmp_path):
    """W&B's q_uniform without q (q 1.0) gives 2.0: an integer key's grid points, its
    Optuna param and its MLflow param are all 2; a float key's whole q gives 1.0, not 1."""
    spec = spec_of(tmp_path, "method: grid\nmetric: {name: test_loss}\nparameters:\n"
                             "  epochs: {distribution: q_uniform, min: 1, max: 3}\n")
    assert spec.parameters[0].grid_values() == (1, 2)
    assert all(type(v) is int for v in spec.parameters[0].grid_values())
    decay = spec_of(tmp_path, "method: random\nmetric: {name: test_loss}\nparameters:\n"
                              "  weight_decay: {distribution: q_uniform, min: 0, max: 1, q: 1}\n")
    assert {type(d["weight_decay"]) for d in draws(decay, 50)} == {float}


def test_a_grid_too_large_to_list_is_one_line(tmp_path):
    with pytest.raises(SweepError, match="the grid has 1,000,000,000 points; at most"):
        spec_of(tmp_path, "method: grid\nmetric: {name: test_loss}\nparameters:\n"
                          "  learning_rate: {distribution: q_uniform, min: 0.0, max: 1.0, "
                          "q: 1.0e-9}\n")


def test_what_changed_with_wandbs_engine_is_a_change_of_question(tmp_path):
    """A study made when bayes was Optuna's TPE, or when a float grid's points were
    rounded, asks another question now: its resume is refused before anything is written
    (unless --allow-change), not continued silently."""
    bayes = spec_of(tmp_path, "method: bayes\nmetric: {name: test_loss}\nparameters:\n"
                              "  learning_rate: {min: 0.01, max: 0.1}\n")
    assert "W&B's bayes" in bayes.meaning()["sampler"]
    tpe = spec_of(tmp_path, "method: tpe\nmetric: {name: test_loss}\nparameters:\n"
                            "  learning_rate: {min: 0.01, max: 0.1}\n")
    assert "sampler" not in tpe.meaning()
    grid = spec_of(tmp_path, "method: grid\nmetric: {name: test_loss}\nparameters:\n"
                             "  learning_rate: {distribution: q_uniform, min: 0.05, max: 0.3, "
                             "q: 0.1}\n  epochs: {distribution: q_uniform, min: 1, max: 3}\n")
    assert grid.meaning()["grid_points"] == {"learning_rate": [0.05, 0.15000000000000002,
                                                               0.25000000000000006]}


def test_a_law_that_only_draws_nan_is_run_and_said(tmp_path, monkeypatch, capsys):
    """W&B accepts sigma 0 (its schema's minimum), and its engine draws NaN for it: the
    file runs as W&B would, and a warning line says every trial will fail."""
    path = tmp_path / "nan.yaml"
    path.write_text("method: random\nmetric: {name: test_loss}\nparameters:\n"
                    "  learning_rate: {distribution: normal, mu: 0.05, sigma: 0}\n")
    monkeypatch.chdir(tmp_path)
    assert runner.main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "warning: parameters.learning_rate: normal mu 0.05 sigma 0" in out.out
    assert "got nan" in out.out and "RuntimeWarning" not in out.err
