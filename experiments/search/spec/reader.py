"""Reading a sweep file's values: every mistake is one SweepError line naming the file,
the key path, what was found and what is allowed (with the closest allowed name)."""

from __future__ import annotations

import contextlib
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from experiments.core import config as cfg
from experiments.core import yamlfile


class SweepError(cfg.UserError):
    """A bad sweep file; the message is one line, one per mistake (`lines`)."""

    def __init__(self, message: str, lines: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.lines = lines or (message,)


class Reader:
    """Checks for the values of one sweep file, whose path every message names. Parts of
    the file checked on their own (`each`) note their mistake and the reading goes on, so
    a file with three mistakes is told all three at once (`check`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.found: list[str] = []

    @contextlib.contextmanager
    def each(self) -> Iterator[None]:
        """One part of the file: its mistake is noted, and the next part is read."""
        try:
            yield
        except (SweepError, cfg.ConfigError) as exc:  # a config key's own check too
            for line in getattr(exc, "lines", (str(exc),)):
                if not any(self._within(line, told) for told in self.found):
                    self.found.append(line)

    def _within(self, line: str, told: str) -> bool:
        """Whether `line` is about the key `told` is about, or a key inside it: a key gets
        one line (early_terminate refused for a trade-off, and its type too, was two)."""
        def key(text: str) -> str:
            return text.removeprefix(f"{self.path}: ").split(": ", 1)[0]

        k, t = key(line), key(told)
        return line == told or k == t or k.startswith((f"{t}.", f"{t}["))

    def check(self, since: int = 0) -> None:
        """Every mistake noted so far, in one SweepError (a line each), when there are more
        than `since` (a part that checks its own pieces passes its start)."""
        if len(self.found) > since:
            raise SweepError("; ".join(self.found), tuple(self.found))

    def fail(self, key: str, problem: str) -> SweepError:
        return SweepError(cfg.one_line(f"{self.path}: {key}: {problem}"))

    def mapping(self, value: Any, key: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {cfg.show(value)}")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(key, f"keys must be strings, got {cfg.show(k)}")
        return value

    def known(self, value: dict, key: str, allowed: tuple[str, ...]) -> None:
        """Every unknown key of the mapping, told together."""
        lines = tuple(cfg.one_line(f"{self.path}: {f'{key}.{k}' if key else k}: unknown key"
                                   f"{cfg.did_you_mean(k, allowed)}; allowed: "
                                   f"{', '.join(allowed)}") for k in value if k not in allowed)
        if lines:
            raise SweepError("; ".join(lines), lines)

    def choice(self, value: Any, key: str, allowed: tuple[str, ...]) -> Any:
        if not isinstance(value, str | int | float | bool) or value not in allowed:
            hint = cfg.did_you_mean(value, allowed) if isinstance(value, str) else ""
            raise self.fail(key, f"got {cfg.show(value)}{hint}; allowed: {', '.join(allowed)}")
        return value

    def integer(self, value: Any, key: str, low: int, high: int = 10**9) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"expected an integer from {low} to {high}, "
                                 f"got {cfg.show(value)}")
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, str):  # "1e-5" in quotes is a number people meant
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise self.fail(key, f"expected a finite number, got {cfg.show(value)}")
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected text, got {cfg.show(value)}")
        return value

    def config_value(self, key: str, config_key: str, value: Any) -> Any:
        try:
            return cfg.coerce(config_key, value)
        except cfg.ConfigError:
            raise self.fail(key, f"got {cfg.show(value)}; {config_key} takes "
                                 f"{cfg.allowed(config_key)}") from None

    def config_key(self, key: str, config_key: str) -> None:
        if not cfg.known(config_key):
            raise self.fail(key, f"unknown config key{cfg.did_you_mean(config_key, cfg.KEYS)}; "
                                 f"known: {', '.join(cfg.KEYS)}")


def read(path: str) -> Any:
    """The file's YAML, or SweepError naming the line."""
    try:
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a FIFO blocked the read for ever
            raise SweepError(f"{path}: cannot read: not a regular file (a FIFO or a device)")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise SweepError(cfg.one_line(f"{path}: cannot read: {reason}")) from None
    try:
        return yamlfile.load(text)
    except yamlfile.DuplicateKey as exc:
        raise SweepError(cfg.one_line(f"{path}: line {exc.line}: {exc}; YAML forbids a key "
                                      "given twice (and would keep only the last)")) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise SweepError(cfg.one_line(f"{path}: malformed YAML{where}: {problem}")) from None
    except ValueError:  # PyYAML's int() of a number of over 4,300 digits
        raise SweepError(f"{path}: malformed YAML: a number of over 4,300 digits") from None
