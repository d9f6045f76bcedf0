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
`keys` as a literal. `load` imports it; `own_data` checks what `data` gives, and `check`
builds the network once and runs it on two inputs, so a network whose logits do not fit
the labels is refused before any trial.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.util
import math
import signal
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from experiments.core.config import (
    BUILT_IN_TASKS,
    Config,
    ConfigError,
    UserError,
    one_line,
    show,
)

TASKS = Path(__file__).with_name("tasks")
REQUIRED = ("network",)
DATA_FIELDS = ("train_x", "train_y", "test_x", "test_y")
MAX_BYTES = 1_000_000
MAX_KEYS = 200  # a task's own keys: a sweep's question, not a table
MAX_CLASSES = 100_000


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


@dataclass(frozen=True)
class TaskData:
    """A task's own arrays, checked: float32 inputs (N x ...), int32 labels 0..classes-1.
    Named as the MNIST record's fields are, so the records treat both alike."""

    train_images: Any  # the network's inputs, as the task gives them
    train_labels: Any
    test_images: Any
    test_labels: Any
    name: str
    source: str  # the task file
    fallback_reason: str = ""

    @functools.cached_property
    def digest(self) -> str:
        h = hashlib.sha256()
        for array in (self.train_images, self.train_labels, self.test_images,
                      self.test_labels):
            h.update(str(array.shape).encode())
            h.update(array.tobytes())
        return h.hexdigest()[:16]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test_images.shape[1:])


def own_data(task: Task, config: Config) -> TaskData | None:
    """The task's `data(config)`, checked, or None for a task on the runner's MNIST."""
    if "data" not in task.file.defines:
        return None
    import numpy as np

    where = f"task file {str(task.file.path)!r}: data(config)"
    try:
        given = task.module.data(config)
    except (Exception, SystemExit) as exc:
        raise TaskError(f"{where} raised {type(exc).__name__}: {_brief(str(exc))}") from None
    if isinstance(given, dict):
        given = (*(given.get(k) for k in DATA_FIELDS), given.get("name", "data"))
    if not isinstance(given, tuple | list) or len(given) not in (4, 5):
        raise TaskError(f"{where}: expected a dict with {', '.join(DATA_FIELDS)} (and a name), "
                        f"or a tuple of them, got {type(given).__name__}")
    name = one_line(" ".join(str(given[4]).split()))[:200] if len(given) == 5 else "data"
    arrays = []
    for field_name, value in zip(DATA_FIELDS, given[:4], strict=True):
        array = np.asarray(value) if value is not None else None
        if array is None or array.dtype == object or array.ndim < 1 or not len(array):
            raise TaskError(f"{where}: {field_name} must be a non-empty array")
        arrays.append(array)
    train_x, train_y, test_x, test_y = arrays
    for x_name, x in (("train_x", train_x), ("test_x", test_x)):
        if x.dtype != np.float32:
            raise TaskError(f"{where}: {x_name} is {x.dtype}; the network trains on float32 "
                            "(convert with .astype(np.float32), normalised as you want it)")
        if not np.isfinite(x).all():
            raise TaskError(f"{where}: {x_name} holds NaN or infinite values")
    for y_name, y in (("train_y", train_y), ("test_y", test_y)):
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise TaskError(f"{where}: {y_name} must be integer class labels of shape (N,), "
                            f"got {y.dtype} of shape {y.shape}")
        if y.min() < 0 or y.max() >= MAX_CLASSES:
            raise TaskError(f"{where}: {y_name} holds a label outside 0..{MAX_CLASSES - 1} "
                            f"(labels are class numbers, at most {MAX_CLASSES:,} classes)")
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if len(x) != len(y):
            raise TaskError(f"{where}: {len(x)} {split} inputs but {len(y)} labels")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise TaskError(f"{where}: train inputs are {train_x.shape[1:]} each, test inputs "
                        f"{test_x.shape[1:]}")
    return TaskData(np.ascontiguousarray(train_x), train_y.astype(np.int32),
                    np.ascontiguousarray(test_x), test_y.astype(np.int32), name=name[:200],
                    source=str(task.file.path))


def random_note(task: Task) -> str:
    """What a user is told when the network draws random numbers as it trains."""
    return (f"WARNING: task {task.file.name}: the network draws random numbers as it trains "
            "(dropout); MindSpore's CPU random kernels do not repeat them for a seed, so its "
            "runs are not bit-reproducible (replay, repeats and the ablation see that noise)")


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


def classes_of(data: Any) -> int:
    """The classes the labels of both splits name (a test label the training never saw
    still needs its logit)."""
    return int(max(data.train_labels.max(), data.test_labels.max())) + 1


def check(task: Task, config: Config, images: Any, classes: int) -> Task:
    """Build the network once and run it (and the loss) on a few inputs: the logits must be
    floats of shape (N, classes) with a class for every label. TaskError otherwise.

    Returns the task with `random` set when the network draws random numbers as it
    trains (a cell holding a seeded random kernel, or two training-mode calls that
    differ). MindSpore's CPU dropout kernels do not repeat their draws for a seed: a
    trainer reused across runs gave one seed three losses, and a fresh trainer per run,
    built after `set_seed` and without the kernels' cache, still one run in four another
    (measured). Such runs are told and tagged as not bit-reproducible.
    """
    import mindspore
    import numpy as np
    from mindspore import Tensor

    from experiments.core.steps import use_graph_mode

    use_graph_mode()  # as it trains: a graph keeps its random kernels' state between calls
    where = f"task file {str(task.file.path)!r}"
    try:
        net = task.network(config)
    except (Exception, SystemExit) as exc:
        raise TaskError(f"{where}: network(config) raised {type(exc).__name__}: "
                        f"{str(exc)[:300]}") from None
    if not isinstance(net, mindspore.nn.Cell):
        raise TaskError(f"{where}: network(config) must return a mindspore.nn.Cell, got "
                        f"{type(net).__name__}")
    x = images[:2]
    y = (np.arange(len(x)) % classes).astype(np.int32)
    try:
        logits = net(Tensor(x))
    except Exception as exc:
        raise TaskError(f"{where}: the network fails on a batch of shape {tuple(x.shape)}: "
                        f"{type(exc).__name__}: {_brief(str(exc))}") from None
    shape = tuple(getattr(logits, "shape", ()))
    if len(shape) != 2 or shape[0] != len(x) or shape[1] != classes:
        raise TaskError(f"{where}: the network's logits have shape {shape} for {len(x)} "
                        f"inputs; expected ({len(x)}, {classes}): a logit per class of the "
                        f"labels (0-{classes - 1})")
    if not mindspore.ops.is_floating_point(logits):
        raise TaskError(f"{where}: the network's logits are {logits.dtype}, expected floats")
    net.set_train(True)
    random = bool(seeded_kernels(net))
    if not random:  # a random op called in `construct`: its kernel's state moves on
        first, second = net(Tensor(x)).asnumpy(), net(Tensor(x)).asnumpy()
        random = not np.array_equal(first, second)
    if task.loss is not None:
        try:
            value = task.loss(logits, Tensor(y))
            ok = tuple(value.shape) == () and math.isfinite(float(value.asnumpy()))
        except Exception as exc:
            raise TaskError(f"{where}: loss(logits, labels) raised {type(exc).__name__}: "
                            f"{_brief(str(exc))}") from None
        if not ok:
            raise TaskError(f"{where}: loss(logits, labels) must return a finite scalar")
    return dataclasses.replace(task, random=random)


def check_apart(task: Task, config: Config, input_shape: tuple[int, ...], classes: int) -> Task:
    """`check` in a child process, for a process that must not run a graph itself (it
    forks workers afterwards, and a fork after a graph hangs). TaskError as `check`."""
    import json
    import subprocess

    from experiments.core.config import flatten

    file = task.file
    payload = json.dumps({"path": str(file.path), "config": flatten(config),
                          "shape": [2, *map(int, input_shape)],
                          "classes": classes})
    from experiments.runtime import interrupts

    # -P: the current directory is not put first on the child's path, so a `copy.py` or
    # `json.py` lying there is neither imported in place of Python's nor run.
    done = subprocess.run([sys.executable, "-P", "-c", "from experiments.core.task import "
                           "main; main()", payload], capture_output=True, text=True,
                          check=False)
    interrupts.check()  # Ctrl-C reached the child too: an interruption, not a bad task
    if done.returncode in (-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT):
        raise KeyboardInterrupt
    said = done.stdout.strip().splitlines()
    verdict = said[-1] if said else ""
    if done.returncode == 2 and verdict.startswith("task file"):
        raise TaskError(verdict)
    if done.returncode != 0 or verdict not in ("random", "steady"):
        raise TaskError(f"task file {str(file.path)!r}: checking it in a process of its own "
                        f"ended with code {done.returncode} and no verdict (does it exit?): "
                        f"{_brief(done.stderr[-300:]) or 'no message'}")
    return dataclasses.replace(task, random=verdict == "random")


def main() -> None:
    """The child of `check_apart`: exit 2 with the one line when the task is wrong."""
    import json

    import numpy as np

    from experiments.core import config as cfg

    payload = json.loads(sys.argv[1])
    flat = {k: v for k, v in payload["config"].items() if k != "task"}
    config = cfg.build({**flat, "task": payload["path"]})
    images = np.random.default_rng(0).standard_normal(payload["shape"]).astype(np.float32)
    try:
        file = locate(payload["path"])
        checked = check(load(file), file.complete(config), images, payload["classes"])
    except UserError as exc:
        print(exc)
        sys.exit(2)
    print("random" if checked.random else "steady")


def seeded_kernels(net: Any) -> list:
    """The random primitives the network's cells hold (nn.Dropout's, seeded by Seed0 and
    Seed1 when it is built)."""
    from mindspore.ops import Primitive

    return [prim for _, cell in net.cells_and_names()
            for prim in getattr(cell, "_primitives", {}).values()
            if isinstance(prim, Primitive) and "Seed0" in prim.attrs]


def _brief(text: str) -> str:
    """A MindSpore error fills a screen: its first 300 characters on one line."""
    return " ".join(text.split())[:300]
