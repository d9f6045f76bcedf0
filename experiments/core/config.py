"""One frozen config object per run, built from defaults and `--set KEY=VALUE` overrides.

Every value is checked here, before anything touches the network, MindSpore or the
tracking store, so that bad input costs nothing and writes nothing. What a key allows
lives next to its field (`_key(...)` metadata); the key list and the checks derive from it.

One rule reads a value, wherever it comes from: a `--set` value is read as a YAML scalar,
exactly as the same text in a sweep file's `fixed:` is, then checked by its key's kind. So
`epochs=2.0`, `data.download=on` and `grad_mode= has_aux` mean the same on the command
line as in YAML. Text keys (paths) take the text as written, without surrounding spaces.
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from experiments.core.words import did_you_mean, one_line, show  # noqa: F401 - the config's words

GRAD_MODES = ("has_aux", "no_aux", "stop_gradient")
OPTIMIZERS = ("sgd", "momentum", "adam")  # sgd is the seed's
BUILT_IN_TASKS = ("mlp", "lenet")  # experiments/core/tasks/; mlp is the seed's network
# A task's own keys are `model.NAME` (the task file declares them and their defaults).
TASK_KEY_RE = re.compile(r"^model\.[A-Za-z_][A-Za-z0-9_]{0,63}$")
DEVICES = ("CPU", "GPU", "Ascend")  # MindSpore's device targets
# The learning rate trains as a float32: below the smallest normal float32 it becomes 0 (or
# a subnormal that the CPU kernels flush to 0), above the largest it becomes inf.
FLOAT32_TINY = 1.1754943508222875e-38
FLOAT32_MAX = 3.4028234663852886e38
# Names that become Optuna studies and MLflow experiments (W&B's sweep names are free
# text). Quotes and backslashes would break the MLflow filters that find a sweep's runs;
# artifact folders are made safe apart (tracking/store.py).
NAME_RE = re.compile(r"""^(?=\S)[^'"`\\]{1,100}(?<=\S)$""")
NAME_RULE = ("1-100 printable characters without quotes, backticks or backslashes, not "
             "starting or ending with a space")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class UserError(ValueError):
    """Bad user input of any kind (config, sweep file, data, images, ...): the message is one
    line naming what is wrong and what is allowed; the command line exits with code 2."""


class ConfigError(UserError):
    """A bad config key or value; the message names the key and what is allowed."""


@dataclass(frozen=True)
class Rule:
    """What one config key accepts."""

    kind: str  # int, float, choice, bool or str
    text: str  # what is allowed, in words, for messages
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


def _key(default: Any, rule: Rule) -> Any:
    return field(default=default, metadata={"rule": rule})


@dataclass(frozen=True)
class DataConfig:
    # The seed downloads into ./MNIST_Data; an existing MNIST folder there is used as is.
    path: str = _key("MNIST_Data", Rule("str", "a non-empty folder path"))
    # False never touches the network: a missing folder goes straight to the offline sample.
    download: bool = _key(True, Rule("bool", "true or false (also yes/no, on/off, 1/0)"))
    # Evaluation has no gradients, so a large compiled batch is both exact and fast.
    eval_batch_size: int = _key(1000, Rule("int", "an integer from 1 to 100000", 1, 100_000))


@dataclass(frozen=True)
class Config:
    # The seed's hyper-parameters.
    epochs: int = _key(3, Rule("int", "an integer from 1 to 10000", 1, 10_000))
    batch_size: int = _key(64, Rule("int", "an integer from 1 to 65536", 1, 65_536))
    learning_rate: float = _key(1e-2, Rule(
        "float", "a number from 1.2e-38 to 3.4e+38 (a positive normal float32, the dtype "
        "that trains)", FLOAT32_TINY, FLOAT32_MAX))
    # has_aux is the seed; no_aux and stop_gradient are the autodiff ablations.
    grad_mode: str = _key("has_aux", Rule("choice", "one of " + ", ".join(GRAD_MODES),
                                          choices=GRAD_MODES))
    # Seeds weights and data order: same config and seed give identical metrics on CPU.
    seed: int = _key(0, Rule("int", "an integer from 0 to 4294967295", 0, 2**32 - 1))
    # Where it trains (one device per process; the id is the card, recorded on CPU too).
    device: str = _key("CPU", Rule("choice", "one of CPU, GPU, Ascend", choices=DEVICES))
    device_id: int = _key(0, Rule("int", "an integer from 0 to 4095", 0, 4095))
    # The network, and optionally its loss and own keys: a built-in name or a task file.
    task: str = _key("mlp", Rule("str", "mlp, lenet or the path of a task file (.py)"))
    # The seed's optimizer is plain SGD: momentum and weight decay 0 keep its bits.
    optimizer: str = _key("sgd", Rule("choice", "one of " + ", ".join(OPTIMIZERS),
                                      choices=OPTIMIZERS))
    momentum: float = _key(0.0, Rule("float", "a number from 0 to 0.999 (sgd and momentum)",
                                     0.0, 0.999))
    weight_decay: float = _key(0.0, Rule("float", "a number from 0 to 1", 0.0, 1.0))
    data: DataConfig = field(default_factory=DataConfig)
    # The task's own keys as sorted (name, value) pairs, every one the task declares
    # (core/task.py completes them from the task's defaults before anything trains).
    model: tuple[tuple[str, Any], ...] = field(default=(), metadata={"task_keys": True})

    @property
    def settings(self) -> dict[str, Any]:
        """The task's own keys, {name: value}: what `network(config)` reads."""
        return dict(self.model)


def _rules(cls: type, prefix: str = "") -> dict[str, Rule]:
    out: dict[str, Rule] = {}
    for f in dataclasses.fields(cls):
        if "rule" in f.metadata:
            out[prefix + f.name] = f.metadata["rule"]
        elif "task_keys" in f.metadata:
            continue
        else:  # a nested config, e.g. data
            out |= _rules(f.default_factory, f"{prefix}{f.name}.")  # type: ignore[arg-type]
    return out


_RULES = _rules(Config)
KEYS: tuple[str, ...] = tuple(_RULES)
# Keys that say where the data comes from: one sweep trains on one dataset.
DATA_SOURCE_KEYS = ("data.path", "data.download")
# Keys that say where a trial runs, not what it trains: never searched, not in a sweep's
# question (workers on several devices answer one question).
PLACEMENT_KEYS = ("device", "device_id")
# A task key's value is a number, a flag or a word until the task file types it.
TASK_RULE = Rule("task", "a number, true/false or a word, as the task file declares")


def known(key: str) -> bool:
    """A runner key, or a task's own key (`model.NAME`; the task file says if it has it)."""
    return key in _RULES or bool(TASK_KEY_RE.match(key))


def _rule(key: str) -> Rule:
    return _RULES.get(key, TASK_RULE)


def kind(key: str) -> str:
    """int, float, choice, bool, str, or task (a task's own key, typed by its file)."""
    return _rule(key).kind


def allowed(key: str) -> str:
    """What a key accepts, in words."""
    return _rule(key).text


def valid_name(value: Any) -> bool:
    """Whether a sweep's name can be a study and an experiment (see NAME_RULE)."""
    return isinstance(value, str) and value.isprintable() and bool(NAME_RE.match(value))


def check_text(value: str, what: str) -> str:
    """Free text that names something (an experiment): printable, 1-500 characters."""
    if not value.strip() or not value.isprintable() or len(value) > 500:
        raise ConfigError(f"{what}: expected 1-500 printable characters, got {show(value)}")
    return value


def _scalar(text: str) -> Any:
    """A command-line value read as YAML reads a scalar; anything else stays text."""
    import yaml

    from experiments.core import yamlfile

    try:
        value = yamlfile.load(text)
    except (yaml.YAMLError, ValueError):  # ValueError: an integer of over 4,300 digits
        return text
    return value if isinstance(value, str | int | float | bool) else text


def coerce(key: str, value: Any) -> Any:
    """Convert a raw value (a CLI string or a YAML scalar) for `key`, or raise ConfigError."""
    if not known(key):
        raise ConfigError(f"unknown config key {show(key)}{did_you_mean(key, KEYS)}; known "
                          f"keys: {', '.join(KEYS)}, and a task's own keys as model.NAME")
    rule = _rule(key)
    bad = ConfigError(f"config key '{key}': expected {rule.text}, got {show(value)}")
    if rule.kind == "task":
        if isinstance(value, str):
            value = _scalar(value.strip())
        if not isinstance(value, str | int | float | bool) or (
                isinstance(value, float) and not math.isfinite(value)) or value == "":
            raise bad
        return value
    if rule.kind == "str":
        # A path is text; a YAML number (2020) is the folder of that name.
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise bad
        return value.strip()
    if isinstance(value, str):
        value = _scalar(value.strip())
    if rule.kind == "bool":
        if isinstance(value, bool):
            return value
        words = str(value).strip().lower()
        if words in _TRUE or words in _FALSE:
            return words in _TRUE
        raise bad
    if rule.kind == "choice":
        if not isinstance(value, str) or value.strip() not in rule.choices:
            raise bad
        return value.strip()
    return _number(rule, value, bad)


def _number(rule: Rule, value: Any, bad: ConfigError) -> int | float:
    if isinstance(value, bool):
        raise bad
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text
        try:
            value = int(value) if rule.kind == "int" and value.lstrip("+-").isdigit() \
                else float(value)
        except ValueError:
            raise bad from None
    if not isinstance(value, int | float):
        raise bad
    if rule.kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise bad
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise bad
        if rule.high == FLOAT32_MAX:  # judged by what float32 makes of it, as it trains
            try:
                trained = struct.unpack("<f", struct.pack("<f", value))[0]
            except OverflowError:
                raise bad from None
            if not FLOAT32_TINY <= trained <= FLOAT32_MAX:
                raise bad
            return value
    if not rule.low <= value <= rule.high:  # type: ignore[operator]
        raise bad
    return value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn `KEY=VALUE` strings into a checked {key: value} dict; every bad item is told
    at once (a line each, `ConfigError.lines`), not one per run."""
    out: dict[str, Any] = {}
    wrong: list[str] = []
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        try:
            if not sep or not key:
                raise ConfigError(
                    f"--set expects KEY=VALUE, got {item!r}; known keys: {', '.join(KEYS)}")
            out[key] = coerce(key, value)
        except ConfigError as exc:
            if str(exc) not in wrong:  # the same mistake twice is told once
                wrong.append(str(exc))
    if wrong:
        error = ConfigError("; ".join(wrong))
        error.lines = tuple(wrong)
        raise error
    return out


def build(overrides: dict[str, Any] | None = None, base: Config | None = None) -> Config:
    """Apply checked overrides (dotted keys) to `base` (the defaults if None)."""
    config = base or Config()
    top: dict[str, Any] = {}
    data: dict[str, Any] = {}
    model = dict(config.model)
    for key, value in (overrides or {}).items():
        value = coerce(key, value)
        if key.startswith("model."):
            model[key[len("model."):]] = value
        elif key.startswith("data."):
            data[key[len("data."):]] = value
        else:
            top[key] = value
    if data:
        top["data"] = dataclasses.replace(config.data, **data)
    if model != dict(config.model):
        top["model"] = tuple(sorted(model.items()))
    config = dataclasses.replace(config, **top)
    if config.optimizer == "adam" and config.momentum:
        raise ConfigError(f"config key 'momentum': adam has no momentum (it is for sgd and "
                          f"momentum), got {show(config.momentum)} with optimizer adam")
    return config


def flatten(config: Config) -> dict[str, Any]:
    """The config as {dotted key: value}: what MLflow logs as params."""
    out: dict[str, Any] = {}
    for key in KEYS:
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = value
    return out | {f"model.{name}": value for name, value in config.model}


# Keys added after sweeps were recorded, with the value every older run trained with: at
# that value they are left out of a sweep's question and a run's config digest, so a
# study or a lost trial recorded before them is still found as the same.
LATER_KEYS = {"task": "mlp", "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0}


def question(config: Config) -> dict[str, Any]:
    """`flatten`, without the later keys at the value older runs had."""
    return {k: v for k, v in flatten(config).items()
            if not (k in LATER_KEYS and v == LATER_KEYS[k])}


def as_dict(config: Config) -> dict[str, Any]:
    """The config as nested plain data, for the YAML artifact."""
    out = dataclasses.asdict(config)
    out["model"] = dict(config.model)
    if not out["model"]:
        del out["model"]
    return out
