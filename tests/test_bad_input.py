"""Bad input, systematically: whatever the sweep file or --set says, the answer is a valid
config or exit 2 with one line -- never a traceback, never a write."""

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runner
from experiments.core import config as cfg
from experiments.search.spec import sweepfile
from helpers import ROOT

KEYS = ["name", "method", "metric", "n_trials", "timeout_s", "seed", "pruner", "fixed",
        "parameters", "ablation", "distribution", "values", "value", "min", "max", "q", "goal",
        "type", "warmup_epochs", "grad_mode", *cfg.KEYS, "nope", "program", "command",
        "project", "entity", "early_terminate", "run_cap", "min_iter", "max_iter", "s", "eta",
        "strict", "target", "mu", "sigma", "probabilities", "a", "b"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["tpe", "grid", "median", "has_aux", "no_aux",
                                     "log_uniform_values", "uniform", "int_uniform",
                                     "q_uniform", "log_uniform", "test_accuracy", "maximize",
                                     "bayes", "hyperband", "normal", "q_normal", "beta",
                                     "test_loss", "minimize"]))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)),
    max_leaves=25)


def run_main(argv, folder):
    err = io.StringIO()
    before = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = runner.main(argv)
    finally:
        os.chdir(before)
    return code, err.getvalue()


def assert_clean_failure(code, err, folder, expected_files):
    assert code == 2, err
    lines = err.strip().splitlines()
    # One line per mistake (a sweep file's every mistake is told at once), each an error.
    assert lines and all(line.startswith("error: ") for line in lines), err
    assert len(set(lines)) == len(lines) and "Traceback" not in err
    assert sorted(p.name for p in Path(folder).iterdir()) == expected_files


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(document=documents)
def test_any_sweep_document_is_valid_or_exit_2(document):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.yaml"
        path.write_text(yaml.safe_dump(document))
        try:
            sweepfile.load(path)
        except sweepfile.SweepError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            code, err = run_main(["sweep", str(path), "--dry-run"], folder)
            assert_clean_failure(code, err, folder, ["s.yaml"])
        else:  # valid: the CLI shows it, writes nothing
            code, err = run_main(["sweep", str(path), "--dry-run"], folder)
            assert code == 0, err
            assert sorted(p.name for p in Path(folder).iterdir()) == ["s.yaml"]


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(max_size=200))
def test_any_text_as_sweep_file_is_valid_or_exit_2(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            sweepfile.load(path)
        except sweepfile.SweepError as exc:
            assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(items=st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from([*cfg.KEYS, "x", "data.x", ""]),
              st.one_of(st.text(max_size=10), st.integers().map(str),
                        st.floats().map(str))),
    st.text(max_size=20)), max_size=4))
def test_any_set_is_a_config_or_exit_2(items):
    try:
        config = cfg.build(cfg.parse_overrides(items))
    except cfg.ConfigError as exc:
        assert "\n" not in str(exc)
        with tempfile.TemporaryDirectory() as folder:
            argv = ["train", *[a for item in items for a in ("--set", item)]]
            code, err = run_main(argv, folder)
            assert_clean_failure(code, err, folder, [])
    else:
        assert config.epochs >= 1 and config.batch_size >= 1 and config.learning_rate > 0
        assert config.grad_mode in cfg.GRAD_MODES


def test_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "s.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    code, _err = run_main(["sweep", str(path)], tmp_path)
    assert code == 2 and not marker.exists()


def test_ui_binds_loopback_by_default():
    args = runner.parser().parse_args(["ui"])
    assert args.host == "127.0.0.1"


TYPED = [k for k in cfg.KEYS if cfg.kind(k) != "str"]
# Spellings people type, then any text made of the characters numbers and words use.
spellings = st.one_of(
    st.sampled_from(["2", "2.0", " 2", "2 ", "2e0", "1e3", "1e-3", "0.01", ".5", "1_000", "010",
                     "0x10", "on", "off", "yes", "No", "TRUE", "1", "0", "", "~", " has_aux",
                     "no_aux ", "stop_gradient", "nan", ".inf", "-1", "+3"]),
    st.text(alphabet="0123456789.e-+_ xonfyestrualhsid", max_size=10))


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(TYPED), text=spellings)
def test_the_command_line_reads_a_value_as_yaml_does(key, text):
    """`--set KEY=TEXT` and `KEY: TEXT` in a sweep file's `fixed` give the same value, or
    are both refused."""

    def read(get):
        try:
            return ("ok", get())
        except (cfg.ConfigError, sweepfile.SweepError):
            return ("refused", None)

    cli = read(lambda: cfg.parse_overrides([f"{key}={text}"])[key])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.yaml"
        path.write_text(f"name: t\nfixed:\n  {key}: {text}\nparameters:\n"
                        "  learning_rate: {values: [0.1]}\n" if key != "learning_rate" else
                        f"name: t\nfixed:\n  {key}: {text}\nparameters:\n"
                        "  seed: {values: [1]}\n")
        in_yaml = read(lambda: sweepfile.load(path).fixed[key])
    assert cli == in_yaml


@pytest.mark.parametrize("storage, says", [
    ("journal:", "cannot use it as a journal file"),
    ("journal:/tmp", "cannot use it as a journal file"),
    ("journal:/proc/x.log", "cannot use it as a journal file"),
    ("journal:/etc/passwd", "cannot open the study storage"),
    ("mysql://localhost/x", "needs a MySQL driver"),
    ("sqlite:///", "give a database file"),
    pytest.param("postgresql://postgres@127.0.0.1:1/x", "cannot open the study storage",
                 marks=pytest.mark.slow),  # the connection is retried for a few seconds
])
def test_a_storage_that_cannot_be_used_is_exit_2(tmp_path, storage, says):
    code, err = run_main(["sweep", str(ROOT / "sweeps" / "tiny.yaml"), "--storage", storage],
                         tmp_path)
    assert_clean_failure(code, err, tmp_path, [])
    assert says in err


def test_read_only_commands_write_no_store(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    for argv in (["compare", "--experiment", "nope"], ["compare", str(ROOT / "sweeps" /
                                                                    "tiny.yaml")],
                 ["predict", "--model", "abc", str(tmp_path / "x.png")]):
        code, err = run_main(argv, tmp_path)
        assert code == 2 and err.startswith("error: "), err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"], argv


def test_a_data_path_too_long_for_the_file_system_is_exit_2(tmp_path):
    for path in ("a" * 300, "a/" * 3000):
        for download in ("true", "false"):
            code, err = run_main(["train", "--set", f"data.path={path}", "--set",
                                  f"data.download={download}"], tmp_path)
            assert_clean_failure(code, err, tmp_path, [])
            assert "data.path" in err


def test_numbers_too_long_to_print_are_refused_in_one_line(tmp_path):
    huge = "9" * 5000
    code, err = run_main(["train", "--set", f"epochs={huge}"], tmp_path)
    assert_clean_failure(code, err, tmp_path, [])
    assert len(err) < 400
    path = tmp_path / "s.yaml"
    path.write_text(f"name: t\nfixed: {{epochs: {huge}}}\nparameters: {{seed: {{values: [1]}}}}\n")
    code, err = run_main(["sweep", str(path)], tmp_path)
    assert_clean_failure(code, err, tmp_path, ["s.yaml"])


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """A 600-byte file whose aliases nest into billions of items, in a free-form key."""
    lines = ["description:", '  a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = tmp_path / "s.yaml"
    path.write_text("\n".join([*lines, "name: *a9", "parameters: {seed: {values: *a9}}", ""]))
    start = time.perf_counter()
    code, err = run_main(["sweep", str(path)], tmp_path)
    assert time.perf_counter() - start < 5
    assert_clean_failure(code, err, tmp_path, ["s.yaml"])


def test_n_trials_has_the_same_ceiling_on_the_command_line(tmp_path):
    code, err = run_main(["sweep", str(ROOT / "sweeps" / "tiny.yaml"), "--n-trials",
                          "100001", "--dry-run"], tmp_path)
    assert_clean_failure(code, err, tmp_path, [])
    assert "--n-trials" in err and "100000" in err
