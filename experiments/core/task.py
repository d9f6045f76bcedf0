"""A task: the network a sweep trains, and optionally its loss, keys and data, in one
Python file.

A task file is the user's code, in the tutorial's functional style. It defines

    network(config) -> mindspore.nn.Cell   the logits (N, classes) of a batch of inputs
    loss(logits, labels) -> scalar         optional; default cross-entropy, as the seed
    keys = {"width": 512, "p": (0.0, 0.0, 0.9)}
                                           optional; its own config keys, `model.NAME`,
                                           each a default or (default, low, high)
    data(config) -> {"train_x", "train_y", "test_x", "test_y", "name"}
                                           optional; float32 inputs and integer labels
                                           (default: MNIST as N x 1 x 28 x 28, normalised)
    to_input(image) -> float32 array       optional; one image file's pixels (a 28x28
                                           digit on MNIST) to one input, for `predict`

The runner keeps its own batching, shuffling and evaluation: they are what make it fast
and reproducible. `mlp` (the seed's network) and `lenet` are built in, through the same
interface; any other value of the `task` key is a path, read relative to the current
directory (never to a sweep file's folder: a sweep file cannot pull in code from where it
lies without the user naming it).

Reading a task is in two steps. `locate` reads the file as text (no import, so no code of
the user's runs and nothing heavy loads): it must parse, define `network`, and declare
`keys` as a literal. `load` imports it; then task_checks.py checks what its `data` gives
and builds the network once, so a network whose logits do not fit the labels is refused
before any trial.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import math
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from experiments.core.config import BUILT_IN_TASKS, Config, ConfigError, UserError, show

TASKS = Path(__file__).with_name("tasks")
REQUIRED = ("network",)
MAX_BYTES = 1_000_000
MAX_KEYS = 200  # a task's own keys: a sweep's question, not a table


class TaskError(UserError):
    """A task file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TaskKey:
    name: str
    default: Any
    low: float | None = None
    high: float | None = None

    @property
    def kind(self) -> str:
        return {bool: "bool", int: "int", float: "float", str: "str"}[type(self.default)]

    def allowed(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "str":
            return "a word"
        a = "an integer" if self.kind == "int" else "a number"
        if self.low is None:
            return a
        return f"{a} from {self.low:g} to {self.high:g}"

    def coerce(self, value: Any, where: str) -> Any:
        bad = ConfigError(f"config key 'model.{self.name}' ({where}): expected "
                          f"{self.allowed()}, got {show(value)}")
        if self.kind in ("bool", "str"):
            if type(value) is not type(self.default):
                raise bad
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        if self.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise bad
            value = int(value)
        else:
            value = float(value)
        if not math.isfinite(value) or (self.low is not None and
                                        not self.low <= value <= self.high):  # type: ignore
            raise bad
        return value


@dataclass(frozen=True)
class TaskFile:
    """A task file as read, before it is imported."""

    name: str  # as the `task` key gives it: mlp, lenet or a path
    path: Path
    digest: str  # sha256 of the file's bytes, 16 hex digits: what replay compares
    keys: tuple[TaskKey, ...]
    defines: frozenset[str]

    def key(self, name: str) -> TaskKey | None:
        return next((k for k in self.keys if k.name == name), None)

    def complete(self, config: Config) -> Config:
        """`config` with every key of this task: checked values, defaults where unset."""
        given = dict(config.model)
        unknown = sorted(set(given) - {k.name for k in self.keys})
        if unknown:
            known = ", ".join(f"model.{k.name}" for k in self.keys) or "none"
            raise ConfigError(f"config key 'model.{unknown[0]}': task {self.name} has no key "
                              f"{unknown[0]!r}; its keys: {known}")
        values = {k.name: k.coerce(given.get(k.name, k.default), self.name) for k in self.keys}
        return dataclasses.replace(config, model=tuple(sorted(values.items())))


@dataclass(frozen=True)
class Task:
    """A task file, imported: its functions."""

    file: TaskFile
    module: ModuleType
    # Whether the network draws random numbers as it trains (dropout): see `check`.
    random: bool = False

    def network(self, config: Config) -> Any:
        return self.module.network(config)

    @property
    def loss(self) -> Any:
        return getattr(self.module, "loss", None)

    @property
    def to_input(self) -> Any:
        return getattr(self.module, "to_input", None)


def path_of(name: str) -> Path:
    """Where the task named by the `task` key lives."""
    if name in BUILT_IN_TASKS:
        return TASKS / f"{name}.py"
    return Path(name).expanduser()


def locate(name: str) -> TaskFile:
    """Read the task file named by `name` without importing it; TaskError if unusable."""
    path = path_of(name)
    where = f"task file {str(path)[:300]!r}"
    if name not in BUILT_IN_TASKS and path.suffix != ".py":
        raise TaskError(f"config key 'task': expected {', '.join(BUILT_IN_TASKS)} or the path "
                        f"of a .py file, got {show(name)}")
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the read for ever
            raise TaskError(f"{where}: not a regular file")
        if info.st_size > MAX_BYTES:
            raise TaskError(f"{where}: over {MAX_BYTES:,} bytes; a task file is code")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TaskError(f"{where}: no such file (config key 'task' takes "
                        f"{', '.join(BUILT_IN_TASKS)} or a path, relative to the current "
                        "directory)") from None
    except OSError as exc:
        raise TaskError(f"{where}: cannot read ({exc.strerror})") from None
    try:
        tree = ast.parse(raw.decode("utf-8"), filename=str(path))
    except UnicodeDecodeError:
        raise TaskError(f"{where}: not UTF-8 text") from None
    except SyntaxError as exc:
        raise TaskError(f"{where}, line {exc.lineno}: syntax error ({exc.msg})") from None
    except (RecursionError, MemoryError):
        raise TaskError(f"{where}: nested too deeply to be read") from None
    defines = frozenset(n.name for n in tree.body if isinstance(n, ast.FunctionDef))
    for fn in REQUIRED:
        if fn not in defines:
            raise TaskError(f"{where}: defines no function {fn}(config); a task defines "
                            "network(config) -> nn.Cell (and optionally loss, to_input, keys)")
    keys = _keys(tree, where)
    return TaskFile(name=name, path=path.resolve(), digest=hashlib.sha256(raw).hexdigest()[:16],
                    keys=keys, defines=defines)


def _keys(tree: ast.Module, where: str) -> tuple[TaskKey, ...]:
    """The `keys = {...}` literal: name -> default, or (default, low, high) for numbers."""
    node = next((n.value for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "keys" for t in n.targets)), None)
    if node is None:
        return ()
    try:
        declared = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise TaskError(f"{where}, line {node.lineno}: `keys` must be a literal dict "
                        "(name: default, or name: (default, low, high))") from None
    if not isinstance(declared, dict):
        raise TaskError(f"{where}, line {node.lineno}: `keys` must be a dict, got "
                        f"{type(declared).__name__}")
    if len(declared) > MAX_KEYS:
        raise TaskError(f"{where}: keys: {len(declared)} keys; a task declares at most "
                        f"{MAX_KEYS}")
    out = []
    for name, spec in declared.items():
        if not isinstance(name, str) or not name.isidentifier() or len(name) > 64:
            raise TaskError(f"{where}: keys: {show(name)} is not a key name (a Python "
                            "identifier of up to 64 characters)")
        out.append(_key(name, spec, where))
    return tuple(out)


def _key(name: str, spec: Any, where: str) -> TaskKey:
    low = high = None
    default = spec
    if isinstance(spec, tuple | list):
        if len(spec) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                     for v in spec):
            raise TaskError(f"{where}: keys: {name}: expected a default or (default, low, "
                            f"high) numbers, got {show(spec)}")
        default, low, high = spec
        if not (math.isfinite(low) and math.isfinite(high) and low <= default <= high):
            raise TaskError(f"{where}: keys: {name}: the default {default!r} must lie "
                            f"between low {low!r} and high {high!r}")
    if default is None or not isinstance(default, bool | int | float | str) or (
            isinstance(default, float) and not math.isfinite(default)):
        raise TaskError(f"{where}: keys: {name}: has no usable default (a number, true/false "
                        f"or a word), got {show(default)}")
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(low, float):
        default = float(default)  # (1, 0.5, 2) is a float key
    return TaskKey(name, default, low, high)


_loaded: dict[tuple[str, Path], Task] = {}


def load(file: TaskFile) -> Task:
    """Import the task file (once per process and content); TaskError if importing fails."""
    key = (file.digest, file.path)
    if key in _loaded:
        return _loaded[key]
    module_name = f"runner_task_{file.digest}_{len(_loaded)}"
    spec = importlib.util.spec_from_file_location(module_name, file.path)
    if spec is None or spec.loader is None:
        raise TaskError(f"task file {str(file.path)!r}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # MindSpore's graph parser looks functions up by module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's code: its error, in one line
        del sys.modules[module_name]
        raise TaskError(f"task file {str(file.path)!r}: importing it raised "
                        f"{type(exc).__name__}: {str(exc)[:300]}") from None
    task = Task(file, module)
    _loaded[key] = task
    return task


