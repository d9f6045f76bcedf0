
import pytest

from experiments.core import config as cfg
from helpers import ROOT, run_cli


def test_defaults_are_the_seed():
    c = cfg.Config()
    assert (c.epochs, c.batch_size, c.learning_rate, c.grad_mode, c.seed) == (
        3, 64, 1e-2, "has_aux", 0)


def test_overrides_are_typed_and_dotted():
    c = cfg.build(cfg.parse_overrides(["epochs=5", "learning_rate=1e-3", "grad_mode=no_aux",
                                       "data.path=/x", "data.download=false"]))
    assert c.epochs == 5 and c.learning_rate == 1e-3 and c.grad_mode == "no_aux"
    assert c.data.path == "/x" and c.data.download is False
    assert cfg.flatten(c)["data.path"] == "/x"


@pytest.mark.parametrize("item, key", [
    ("epochs=0", "epochs"), ("epochs=2.5", "epochs"), ("batch_size=abc", "batch_size"),
    ("learning_rate=-1", "learning_rate"), ("learning_rate=nan", "learning_rate"),
    ("grad_mode=aux", "grad_mode"), ("data.download=maybe", "data.download"),
    ("nope=1", "nope"), ("data.nope=1", "data.nope"), ("seed=-1", "seed"),
])
def test_bad_values_name_the_key(item, key):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse_overrides([item])
    message = str(err.value)
    assert f"'{key}'" in message and "\n" not in message


def test_missing_equals_sign():
    with pytest.raises(cfg.ConfigError, match="KEY=VALUE"):
        cfg.parse_overrides(["epochs"])


@pytest.mark.parametrize("value", ["1e-46", "1e-39", "1e39", "3.5e38", "inf", "0"])
def test_learning_rate_bounds_are_float32s(value):
    """1e-46 trained with a rate of 0 and 1e39 with inf: float32 is the dtype that trains."""
    with pytest.raises(cfg.ConfigError, match=r"learning_rate.*float32"):
        cfg.parse_overrides([f"learning_rate={value}"])


def test_learning_rate_at_the_float32_limits_trains_as_given():
    import numpy as np

    for value in (1.2e-38, 3.4e38):
        rate = cfg.parse_overrides([f"learning_rate={value}"])["learning_rate"]
        assert np.isfinite(np.float32(rate)) and np.float32(rate) > 0


@pytest.mark.parametrize("item, key, value", [
    ("epochs= 2", "epochs", 2), ("epochs=2.0", "epochs", 2), ("epochs=2e0", "epochs", 2),
    ("grad_mode= has_aux", "grad_mode", "has_aux"), ("grad_mode=no_aux ", "grad_mode", "no_aux"),
    ("data.path= MNIST_Data", "data.path", "MNIST_Data"), ("data.download=on", "data.download",
                                                          True),
    ("data.download=No", "data.download", False), ("learning_rate= 1e-3", "learning_rate",
                                                   0.001),
    (" seed =7", "seed", 7),
])
def test_one_spelling_rule_for_every_key(item, key, value):
    assert cfg.parse_overrides([item]) == {key: value}


@pytest.mark.parametrize("command", [["train"], ["sweep", "SWEEP"]])
def test_a_misspelt_set_key_gets_a_did_you_mean(command, tmp_path):
    args = [str(ROOT / "sweeps" / "lr.yaml") if a == "SWEEP" else a for a in command]
    result = run_cli(*args, "--set", "learnign_rate=0.1", cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and not list(tmp_path.iterdir()), result
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: unknown config key 'learnign_rate' (did you mean "
                           "learning_rate?); known keys: epochs, "), line
