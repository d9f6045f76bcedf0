"""One frozen config object per run, built from defaults and `--set KEY=VALUE` overrides.

Every value is checked here, before anything touches the network, MindSpore or the
tracking store, so that bad input costs nothing and writes nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

GRAD_MODES = ("has_aux", "no_aux", "stop_gradient")


class ConfigError(ValueError):
    """Bad user input; the message is one line that names the key and what is allowed."""


def one_line(message: str) -> str:
    """User text (keys, values, paths) may hold newlines or control characters: escape them
    so that an error is always exactly one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


@dataclass(frozen=True)
class DataConfig:
    # The seed downloads into ./MNIST_Data; an existing MNIST folder there is used as is.
    path: str = "MNIST_Data"
    # False never touches the network: a missing folder goes straight to the offline sample.
    download: bool = True
    # Evaluation has no gradients, so a large compiled batch is both exact and fast.
    eval_batch_size: int = 1000


@dataclass(frozen=True)
class Config:
    # The seed's hyper-parameters.
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-2
    # has_aux is the seed; no_aux and stop_gradient are the autodiff ablations.
    grad_mode: str = "has_aux"
    # Seeds weights and data order: same config and seed give identical metrics on CPU.
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)


# What each key allows: (kind, lower bound, upper bound or choices, text for messages).
_RULES: dict[str, tuple[str, Any, Any, str]] = {
    "epochs": ("int", 1, 10_000, "an integer from 1 to 10000"),
    "batch_size": ("int", 1, 65_536, "an integer from 1 to 65536"),
    "learning_rate": ("float", 0.0, math.inf, "a finite number > 0"),
    "grad_mode": ("choice", None, GRAD_MODES, "one of " + ", ".join(GRAD_MODES)),
    "seed": ("int", 0, 2**32 - 1, "an integer from 0 to 4294967295"),
    "data.path": ("str", None, None, "a non-empty folder path"),
    "data.download": ("bool", None, None, "true or false"),
    "data.eval_batch_size": ("int", 1, 100_000, "an integer from 1 to 100000"),
}

KEYS: tuple[str, ...] = tuple(_RULES)
NUMERIC_KEYS = frozenset(k for k, rule in _RULES.items() if rule[0] in ("int", "float"))


def kind(key: str) -> str:
    """int, float, choice, bool or str."""
    return _RULES[key][0]


def allowed(key: str) -> str:
    """What a key accepts, in words."""
    return _RULES[key][3]


def coerce(key: str, value: Any) -> Any:
    """Convert a raw value (a CLI string or a YAML scalar) for `key`, or raise ConfigError."""
    if key not in _RULES:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(KEYS)}")
    kind, low, high, text = _RULES[key]
    bad = ConfigError(f"config key '{key}': expected {text}, got {value!r}")
    if kind == "int":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise bad from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or not low <= value <= high:
            raise bad
        return value
    if kind == "float":
        if isinstance(value, bool):
            raise bad
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not (math.isfinite(value) and value > low):
            raise bad
        return value
    if kind == "choice":
        if value not in high:
            raise bad
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text_value = str(value).strip().lower()
        if text_value in ("true", "1", "yes"):
            return True
        if text_value in ("false", "0", "no"):
            return False
        raise bad
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise bad
    return value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn `KEY=VALUE` strings into a checked {key: value} dict."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--set expects KEY=VALUE, got {item!r}; known keys: {', '.join(KEYS)}")
        out[key] = coerce(key, value)
    return out


def build(overrides: dict[str, Any] | None = None, base: Config | None = None) -> Config:
    """Apply checked overrides (dotted keys) to `base` (the defaults if None)."""
    config = base or Config()
    top: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        value = coerce(key, value)
        if key.startswith("data."):
            data[key[len("data."):]] = value
        else:
            top[key] = value
    if data:
        top["data"] = dataclasses.replace(config.data, **data)
    return dataclasses.replace(config, **top)


def flatten(config: Config) -> dict[str, Any]:
    """The config as {dotted key: value}: what MLflow logs as params."""
    out: dict[str, Any] = {}
    for key in KEYS:
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = value
    return out


def as_dict(config: Config) -> dict[str, Any]:
    """The config as nested plain data, for the YAML artifact."""
    return dataclasses.asdict(config)
