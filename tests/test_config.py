import pytest

from experiments import config as cfg


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
