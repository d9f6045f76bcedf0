"""Bad input, systematically: whatever the sweep file or --set says, the answer is a valid
config or exit 2 with one line -- never a traceback, never a write."""

import contextlib
import io
import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runner
from experiments.core import config as cfg
from experiments.search import sweepfile

KEYS = ["name", "method", "metric", "n_trials", "timeout_s", "seed", "pruner", "fixed",
        "parameters", "ablation", "distribution", "values", "value", "min", "max", "q", "goal",
        "type", "warmup_epochs", "grad_mode", *cfg.KEYS, "nope"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["tpe", "grid", "median", "has_aux", "no_aux",
                                     "log_uniform_values", "uniform", "int_uniform",
                                     "q_uniform", "log_uniform", "test_accuracy", "maximize"]))
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
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
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
