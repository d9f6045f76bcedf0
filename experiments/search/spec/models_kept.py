"""`models:` in a sweep file: which trainings keep their pyfunc model.

Logging a model costs ~0.17 s and 2.9 MB per training (measured on the main job), a
fifth of a short trial, and most of a long sweep's models are never looked at. The
default keeps the models of the top 3 trials so far: a trial's objective run logs its
model when its result ranks among the 3 best complete trials when it ends, so the best
trial always has one (it was the best so far when it ended) and `predict best:` works.
`best` is `top_k 1`; `all` also keeps those of ablation runs and of every seed; `none`
keeps none. The model is written before its run is closed FINISHED, as always, so a
killed worker never leaves a half-written model behind a finished run.

With `repeats` or several metrics a trial's rank is known only once its last seed is
done, when the first seed's weights are gone: there every objective run keeps its model
(unless `none`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from experiments.core import config as cfg
from experiments.search.spec.reader import Reader

MAX_TOP = 1000
DEFAULT_TOP = 3


@dataclass(frozen=True)
class Models:
    kind: str = "top_k"  # top_k, all, none
    top: int = DEFAULT_TOP

    def __str__(self) -> str:
        return f"top_k {self.top}" if self.kind == "top_k" else self.kind


def read(r: Reader, raw: Any) -> Models:
    """best | all | none | top_k N (also {top_k: N})."""
    allowed = f"best, all, none or top_k N (N from 1 to {MAX_TOP})"
    if raw is None:
        return Models()
    if isinstance(raw, dict) and list(raw) == ["top_k"]:
        raw = f"top_k {raw['top_k']}"
    if isinstance(raw, str):
        words = raw.split()
        if words in (["best"], ["all"], ["none"]):
            return Models("top_k", 1) if words == ["best"] else Models(words[0], 0)
        if len(words) == 2 and words[0] == "top_k" and words[1].isascii() \
                and words[1].isdigit() and 1 <= int(words[1]) <= MAX_TOP:
            return Models("top_k", int(words[1]))
    raise r.fail("models", f"expected {allowed}, got {cfg.show(raw)}")


def keeps(models: Models, value: float, others: list[float], maximize: bool,
          objective_run: bool, unranked: str = "") -> tuple[bool, str]:
    """Whether a training keeps its model, and the run's `model` tag saying why.
    `others`: the values of the complete trials so far; `unranked`: why this run's final
    value does not rank its trial ("" when it does: one seed, one metric)."""
    if models.kind == "none":
        return False, "not logged (models: none)"
    if models.kind == "all":
        return True, "logged (models: all)"
    if not objective_run:
        return False, f"not logged: an ablation or later seed (models: {models})"
    if unranked:
        return True, f"logged: {unranked} (models: {models})"
    better = sum((v > value) if maximize else (v < value) for v in others)
    if better < models.top:
        return True, f"logged: #{better + 1} of the trials so far (models: {models})"
    return False, f"not logged: #{better + 1} of the trials so far (models: {models})"
