"""What is checked once a task file is imported, before any trial: its own data, and its
network built once and run on two inputs (in a process of its own when the caller must
stay able to fork workers), which also finds out whether it draws random numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import signal
import sys
from dataclasses import dataclass
from typing import Any

from experiments.core.config import Config, UserError, one_line
from experiments.core.task import Task, TaskError, load, locate

DATA_FIELDS = ("train_x", "train_y", "test_x", "test_y")
MAX_CLASSES = 100_000


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
    done = subprocess.run([sys.executable, "-P", "-c", "from experiments.core.task_checks "
                           "import main; main()", payload], capture_output=True, text=True,
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
