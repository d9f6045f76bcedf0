"""W&B's schema decides whether the W&B part of a sweep file is valid: for a file in W&B's
own form the runner refuses exactly what W&B's `schema_violations_from_proposed_config`
refuses, each complaint one line on its key, W&B's deprecations as notes."""

import textwrap
import warnings

import pytest

import runner
from experiments.core import yamlfile
from experiments.search.spec import sweepfile, wandb_schema
from experiments.search.spec.sweepfile import SweepError

with warnings.catch_warnings():  # importing sweeps warns about its pydantic settings
    warnings.simplefilter("ignore")
    from sweeps.config import schema_violations_from_proposed_config
    from sweeps.params import PARAM_DEPRECATION_MAP

M = "metric: {name: test_loss, goal: minimize}\n"
R = "method: random\n" + M
G = "method: grid\n" + M

# Files in W&B's form only (no key of this runner's), valid and not.
CORPUS = {
    "uniform": R + "parameters: {learning_rate: {min: 0.0001, max: 0.1}}",
    "uniform_named": R + "parameters: {learning_rate: {distribution: uniform, min: 0.01, "
                         "max: 0.1}}",
    "uniform_from_zero": R + "parameters: {learning_rate: {distribution: uniform, min: 0, "
                             "max: 0.001}}",
    "int_uniform_default": R + "parameters: {epochs: {min: 1, max: 3}}",
    "int_uniform_named": R + "parameters: {epochs: {distribution: int_uniform, min: 1, "
                             "max: 3}}",
    "log_uniform_values": "method: bayes\n" + M + "parameters: {learning_rate: {distribution: "
                          "log_uniform_values, min: 1e-4, max: 0.1}}",
    "log_uniform_deprecated": R + "parameters: {learning_rate: {distribution: log_uniform, "
                                  "min: -9.2, max: -2.3}}",
    "inv_log_uniform_deprecated": R + "parameters: {learning_rate: {distribution: "
                                      "inv_log_uniform, min: 2.3, max: 9.2}}",
    "q_log_uniform_deprecated": R + "parameters: {batch_size: {distribution: q_log_uniform, "
                                    "min: 3, max: 6, q: 8}}",
    "normal_sigma_0": R + "parameters: {learning_rate: {distribution: normal, mu: 0.01, "
                          "sigma: 0}}",
    "q_normal": R + "parameters: {batch_size: {distribution: q_normal, mu: 128, sigma: 16, "
                    "q: 8}}",
    "log_normal": R + "parameters: {learning_rate: {distribution: log_normal, mu: -5, "
                      "sigma: 1}}",
    "beta_a_0": R + "parameters: {weight_decay: {distribution: beta, a: 0, b: 2}}",
    "grid_values": G + "parameters: {batch_size: {values: [32, 64]}, grad_mode: "
                       "{value: has_aux}}",
    "grid_int_uniform": G + "parameters: {epochs: {min: 1, max: 2}}",
    "grid_q_uniform_from_1": G + "parameters: {epochs: {distribution: q_uniform, min: 1, "
                                 "max: 10, q: 3}}",
    "nested": R + "parameters: {data: {parameters: {eval_batch_size: {values: [500, 1000]}}}}",
    "probabilities": R + "parameters: {batch_size: {values: [32, 64], probabilities: "
                         "[0.8, 0.2]}}",
    "categorical_w_probabilities": R + "parameters: {batch_size: {distribution: "
                                       "categorical_w_probabilities, values: [32, 64], "
                                       "probabilities: [0.5, 0.5]}}",
    "hyperband_min_iter": R + "early_terminate: {type: hyperband, min_iter: 1}\n"
                              "parameters: {seed: {values: [1, 2]}}",
    "hyperband_max_iter_s": R + "early_terminate: {type: hyperband, max_iter: 9, s: 2}\n"
                                "parameters: {seed: {values: [1, 2]}}",
    "target_impute": "method: random\nmetric: {name: test_accuracy, goal: maximize, target: "
                     "0.9, impute: worst}\nparameters: {seed: {values: [1]}}",
    "recorded_keys": R + "program: train.py\ncommand: [python, train.py]\nentity: me\n"
                         "project: p\ndescription: d\nrun_cap: 3\n"
                         "parameters: {seed: {values: [1]}}",
    "service_keys": R + "controller: {type: local}\nkind: sweep\napiVersion: v1\n"
                        "parameters: {seed: {values: [1]}}",
    # Refused by W&B:
    "int_uniform_float_bounds": R + "parameters: {epochs: {distribution: int_uniform, "
                                    "min: 1.0, max: 5.0}}",
    "no_method": M + "parameters: {seed: {values: [1]}}",
    "controller_remote": R + "controller: {type: remote}\nparameters: {seed: {values: [1]}}",
    "unknown_law_key": R + "parameters: {learning_rate: {distribution: uniform, min: 0.01, "
                           "max: 0.1, step: 0.01}}",
    "bad_goal": "method: random\nmetric: {name: test_loss, goal: down}\n"
                "parameters: {seed: {values: [1]}}",
    "metric_without_name": "method: random\nmetric: {goal: minimize}\n"
                           "parameters: {seed: {values: [1]}}",
    "impute_unknown": "method: random\nmetric: {name: test_loss, goal: minimize, impute: "
                      "mean}\nparameters: {seed: {values: [1]}}",
    "hyperband_without_rungs": R + "early_terminate: {type: hyperband}\n"
                                   "parameters: {seed: {values: [1]}}",
    "early_terminate_asha": R + "early_terminate: {type: asha, min_iter: 1}\n"
                                "parameters: {seed: {values: [1]}}",
    "nested_bad_law": R + "parameters: {data: {parameters: {eval_batch_size: {distribution: "
                          "int_uniform, min: 100.5, max: 500}}}}",
    "nested_extra_key": R + "parameters: {data: {parameters: {eval_batch_size: {value: 500}}, "
                            "foo: 1}}",
    "empty_values": R + "parameters: {batch_size: {values: []}}",
    "negative_probability": R + "parameters: {batch_size: {values: [32, 64], probabilities: "
                                "[1.5, -0.5]}}",
    "probabilities_sum": R + "parameters: {batch_size: {values: [32, 64], probabilities: "
                             "[0.2, 0.2]}}",
    "categorical_with_probabilities": R + "parameters: {batch_size: {distribution: "
                                          "categorical, values: [32, 64], probabilities: "
                                          "[0.5, 0.5]}}",
    "q_zero": R + "parameters: {batch_size: {distribution: q_uniform, min: 16, max: 64, "
                  "q: 0}}",
    "negative_sigma": R + "parameters: {learning_rate: {distribution: normal, mu: 0.1, "
                          "sigma: -1}}",
    "min_above_max": R + "parameters: {learning_rate: {min: 0.1, max: 0.01}}",
    "log_values_from_0": R + "parameters: {learning_rate: {distribution: log_uniform_values, "
                             "min: 0, max: 0.1}}",
    "quoted_numbers": R + "parameters: {learning_rate: {min: '0.01', max: '0.1'}}",
    "unknown_distribution": R + "parameters: {learning_rate: {distribution: gaussian, "
                                "mu: 0.1}}",
    "command_text": R + "command: python train.py\nparameters: {seed: {values: [1]}}",
    "kind_capitalised": R + "kind: Sweep\nparameters: {seed: {values: [1]}}",
    "run_cap_0": R + "run_cap: 0\nparameters: {seed: {values: [1]}}",
    "unknown_top_key": R + "schedule: nightly\nparameters: {seed: {values: [1]}}",
    "empty_parameters": R + "parameters: {}",
}


def wandb_refuses(text: str) -> list[str]:
    """W&B's own verdict on the file, its deprecation notes (warnings) left out."""
    notes = tuple(PARAM_DEPRECATION_MAP.values())
    return [m for m in schema_violations_from_proposed_config(yamlfile.load(text))
            if not m.endswith(notes)]


def write(tmp_path, text: str, name: str = "w.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_the_corpus_has_both_verdicts():
    refused = [name for name, text in CORPUS.items() if wandb_refuses(text)]
    assert len(CORPUS) >= 40 and 15 <= len(refused) <= len(CORPUS) - 15, refused


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_runner_refuses_what_wandb_refuses(tmp_path, name):
    text = CORPUS[name] + "\n"
    refused = wandb_refuses(text)
    try:
        sweepfile.load(write(tmp_path, text))
    except SweepError as exc:
        assert refused, f"W&B accepts {name}; the runner said: {exc.lines}"
        assert all(line.startswith(f"{tmp_path / 'w.yaml'}: ") for line in exc.lines)
    else:
        assert not refused, f"W&B refuses {name} ({refused}); the runner accepted it"


@pytest.mark.parametrize("name, where, says", [
    ("int_uniform_float_bounds", "parameters.epochs.min", "int_uniform takes whole min"),
    ("no_method", "method", "W&B requires it"),
    ("controller_remote", "controller.type", "got 'remote'; allowed: local, cloud"),
    ("categorical_with_probabilities", "parameters.batch_size.probabilities",
     "categorical_w_probabilities"),
    ("nested_bad_law", "parameters.data.parameters.eval_batch_size.min", "got 100.5"),
    ("command_text", "command", "expected a list"),
    ("impute_unknown", "metric.impute", "allowed: latest, best, worst"),
    ("hyperband_without_rungs", "early_terminate", "min_iter"),
    ("quoted_numbers", "parameters.learning_rate.min", "expected a number, got '0.01'"),
])
def test_wandbs_reason_is_one_short_line_on_the_key(tmp_path, name, where, says):
    with pytest.raises(SweepError) as caught:
        sweepfile.load(write(tmp_path, CORPUS[name] + "\n"))
    (line,) = [line for line in caught.value.lines if f": {where}: " in line]
    assert says in line and len(line) < 300 and "\n" not in line, caught.value.lines


def test_three_mistakes_are_three_lines_naming_three_keys(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, """
        method: random
        controller: {type: remote}
        metric: {name: test_loss, goal: up}
        parameters:
          epochs: {distribution: int_uniform, min: 1.0, max: 5}
        """)
    monkeypatch.chdir(tmp_path)
    assert runner.main(["sweep", str(path), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert sorted(line.split(": ")[2] for line in lines) == [
        "controller.type", "metric.goal", "parameters.epochs.min"], lines
    assert list(tmp_path.iterdir()) == [path]


def test_a_deprecated_law_runs_with_wandbs_note(tmp_path, monkeypatch, capsys):
    text = R + "parameters: {learning_rate: {distribution: log_uniform, min: -9, max: -2}}\n"
    spec = sweepfile.load(write(tmp_path, text))
    said = PARAM_DEPRECATION_MAP["param_loguniform"]
    assert said.startswith("uses log_uniform") and "log_uniform_values" in said
    (note,) = [n for n in spec.notes if said in n]
    assert note.startswith("parameters.learning_rate: learning_rate uses log_uniform")
    assert wandb_schema.deprecation_note("param_loguniform") == said
    for law in ("param_inv_loguniform", "param_qloguniform"):
        assert wandb_schema.deprecation_note(law) == PARAM_DEPRECATION_MAP[law]
    monkeypatch.chdir(tmp_path)
    assert runner.main(["sweep", str(tmp_path / "w.yaml"), "--dry-run"]) == 0
    assert sum(said in line for line in capsys.readouterr().out.splitlines()) == 1


def test_nested_deprecated_laws_get_the_note_too(tmp_path):
    spec = sweepfile.load(write(tmp_path, R + "parameters: {data: {parameters: "
                                "{eval_batch_size: {distribution: q_log_uniform, min: 6, "
                                "max: 7, q: 100}}}}\n"))
    assert any(n.startswith("parameters.data.parameters.eval_batch_size: eval_batch_size "
                            "uses q_log_uniform") for n in spec.notes), spec.notes


def test_the_runners_own_keys_do_not_trip_wandbs_schema(tmp_path):
    text = textwrap.dedent("""
        method: tpe
        n_trials: 4
        seed: 3
        timeout_s: 60
        fixed: {epochs: 1}
        pruner: {type: median}
        repeats: 2
        models: none
        ordered: false
        metric: [{name: test_accuracy, goal: maximize}, {name: train_time_s, goal: minimize}]
        parameters:
          learning_rate: {min: 0.01, max: 0.1}
        """)
    assert wandb_schema.check(yamlfile.load(text), sweepfile.RUNNER_KEYS) == ([], [])
    # A trade-off is never pruned: the runner itself refuses a pruner beside it.
    spec = sweepfile.load(write(tmp_path, text.replace("pruner: {type: median}\n", "")))
    assert spec.multi and spec.method == "tpe"
    one = text.replace("metric: [{name: test_accuracy, goal: maximize}, ", "metric: ").replace(
        "goal: minimize}]", "goal: minimize}")
    for method in ("cmaes", "qmc"):  # W&B is asked about these as random
        single = one.replace("method: tpe", f"method: {method}")
        assert wandb_schema.check(yamlfile.load(single), sweepfile.RUNNER_KEYS) == ([], [])
        assert sweepfile.load(write(tmp_path, single)).method == method


def test_a_file_in_the_runners_form_keeps_its_default_method(tmp_path):
    """W&B requires `method`; this runner's own files (a key of its own) default to tpe."""
    spec = sweepfile.load(write(tmp_path, "n_trials: 2\n" + M + "parameters: {seed: "
                                "{values: [1, 2]}}\n"))
    assert spec.method == "tpe"


@pytest.mark.parametrize("law, refused", [
    ("{distribution: uniform, min: -2, max: -1}", "smallest value, -2"),
    ("{distribution: uniform, min: -1, max: 0.001}", "smallest value, -1"),
    ("{distribution: log_uniform, min: -99, max: 0}", "smallest value"),
    ("{distribution: uniform, min: 0, max: 0.001}", None),
    ("{distribution: inv_log_uniform_values, min: 1e-5, max: 0.1}", None),
])
def test_a_continuous_law_is_refused_only_for_draws_the_key_cannot_take(tmp_path, law,
                                                                          refused):
    """An end almost surely never drawn (lr's 0) is no reason; a range mostly or wholly
    outside what the key takes is."""
    text = R + f"parameters: {{learning_rate: {law}}}\n"
    if refused is None:
        sweepfile.load(write(tmp_path, text))
    else:
        with pytest.raises(SweepError, match=f"parameters.learning_rate: its {refused}"):
            sweepfile.load(write(tmp_path, text))


def test_a_q_uniform_grid_checks_its_points_not_a_rounding(tmp_path):
    spec = sweepfile.load(write(tmp_path, CORPUS["grid_q_uniform_from_1"] + "\n"))
    assert sorted(p["epochs"] for p in spec.grid_points()) == [1, 4, 7]
    with pytest.raises(SweepError, match=r"smallest value, 0"):  # random draws round to 0
        sweepfile.load(write(tmp_path, CORPUS["grid_q_uniform_from_1"].replace(
            "method: grid", "method: random") + "\n"))


def test_a_yaml_alias_bomb_is_not_quoted_whole(tmp_path):
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    raw = yamlfile.load("\n".join(lines) + "\nmethod: random\ncommand: {x: *a9}\n"
                        "parameters: {seed: {values: [1]}}\n")
    found, _ = wandb_schema.check(raw, sweepfile.RUNNER_KEYS)
    assert ("command", "too large for W&B's schema check (over 100,000 items)") in found
