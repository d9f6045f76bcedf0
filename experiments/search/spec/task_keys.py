"""The sweep's task: named in `fixed` (or by --set), read before anything trains, and
the task's own keys (`model.NAME`) checked against what the task file declares; and the
optimizer's keys, which only some optimizers take.

A sweep trains one task, as it trains on one dataset: the task is never searched. Its
own keys are, like any key: a value or a law's ends that the task does not take is one
line naming the key, before any trial.
"""

from __future__ import annotations

import math
from typing import Any

from experiments.core import config as cfg
from experiments.core import task as tasks
from experiments.search.spec.parameters import REAL
from experiments.search.spec.reader import Reader
from experiments.search.spec.space import Param


def read_task(r: Reader, fixed: dict[str, Any], params: tuple[Param, ...]
              ) -> tasks.TaskFile | None:
    """The task file the sweep trains, checked with its keys; None (a mistake noted) if
    it cannot be used."""
    where = "fixed.task" if "task" in fixed else "task"
    try:
        file = tasks.locate(str(fixed.get("task", cfg.Config().task)))
    except tasks.TaskError as exc:
        wrong = str(exc)
    else:
        wrong = ""
    if wrong:
        with r.each():
            raise r.fail(where, wrong)
        return None
    try:
        file.complete(cfg.build({k: v for k, v in fixed.items() if k.startswith("model.")}))
    except cfg.ConfigError as exc:
        wrong = str(exc)
    if wrong:
        with r.each():
            raise r.fail("fixed", wrong)
    if fixed.get("optimizer") == "adam" and any(p.key == "momentum" for p in params):
        with r.each():
            raise r.fail("parameters.momentum", "adam has no momentum (it is for sgd and "
                                                "momentum): search it with another optimizer")
    for p in params:
        if p.key.startswith("model."):
            with r.each():
                _law(r, file, p)
    return file


def _law(r: Reader, file: tasks.TaskFile, p: Param) -> None:
    name = p.key[len("model."):]
    key = file.key(name)
    at = f"parameters.{p.key}"
    if key is None:
        known = ", ".join(f"model.{k.name}" for k in file.keys) or "none"
        raise r.fail(at, f"task {file.name} has no key {name!r}; its keys: {known}")
    if key.kind in ("bool", "str") and p.distribution not in ("categorical", "constant"):
        raise r.fail(at, f"model.{name} takes {key.allowed()}: use values")
    if key.kind == "int" and (p.distribution in REAL or (
            p.q is not None and not float(p.q).is_integer())):
        raise r.fail(f"{at}.distribution", f"model.{name} is an integer: use int_uniform, a "
                                           "q_ law with a whole q, or values")
    if p.distribution in ("categorical", "constant"):
        values = p.values
    else:
        values = p.support()
        if key.low is not None and not all(map(math.isfinite, values)):
            raise r.fail(at, f"{p.distribution} is unbounded; model.{name} takes "
                             f"{key.allowed()}: use a bounded law")
        values = tuple(v for v in values if math.isfinite(v))
    for value in values:
        try:
            key.coerce(value, file.name)
        except cfg.ConfigError:
            raise r.fail(at, f"the law can give {cfg.show(value)}; model.{name} takes "
                             f"{key.allowed()}") from None
