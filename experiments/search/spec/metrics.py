"""What a sweep optimises: one metric (W&B's form) or a list of them (a trade-off), and
how many seeds each configuration trains with (`repeats`).

A list of metrics makes a multi-objective study: Optuna's samplers that handle several
objectives search it, its answer is the Pareto front, and no pruner applies (Optuna
prunes on one intermediate value, and a trade-off has several).
"""

from __future__ import annotations

from typing import Any

from experiments.search.spec.reader import Reader

# Per-run metrics a sweep may optimise. train_time_s is the seconds spent training (the
# steps of every epoch, not the evaluation): a cost to trade against accuracy.
METRICS = ("test_accuracy", "test_loss", "train_loss", "train_time_s")
GOALS = ("maximize", "minimize")
MAX_REPEATS = 100
# Samplers that search several objectives (Optuna's CMA-ES is single-objective).
# W&B's bayes optimises one metric (its engine reads metric.name): not a trade-off's method.
MULTI_METHODS = ("tpe", "random", "grid", "qmc", "gp")
Objective = tuple[str, str]  # (metric, goal)


def read_metrics(r: Reader, raw: dict, notes: list[str]
                 ) -> tuple[tuple[Objective, ...], float | None]:
    """The objectives, in order (the first is the one the terminal and `compare` sort by),
    and W&B's metric.target (one metric only)."""
    given = raw.get("metric", {"name": "test_accuracy", "goal": "maximize"})
    if not isinstance(given, list):
        name, goal, target = _one(r, r.mapping(given, "metric"), "metric", notes)
        return ((name, goal),), target
    if len(given) < 2:
        raise r.fail("metric", "a list of metrics needs two or more (a trade-off); give one "
                               "metric as a mapping {name: ..., goal: ...}")
    out: list[Objective] = []
    for i, item in enumerate(given):
        where = f"metric[{i}]"
        name, goal, target = _one(r, r.mapping(item, where), where, notes)
        if target is not None:
            raise r.fail(f"{where}.target", "a stopping target needs one metric; a trade-off "
                                            "has no single value to reach")
        if name in [n for n, _ in out]:
            raise r.fail(f"{where}.name", f"{name} is given twice; each metric once")
        out.append((name, goal))
    return tuple(out), None


def _one(r: Reader, metric: dict, where: str, notes: list[str]
         ) -> tuple[str, str, float | None]:
    # The name, the goal and the target are each told when wrong, all at once.
    before = len(r.found)
    with r.each():
        r.known(metric, where, ("name", "goal", "target", "impute", "impute_while_running"))
    name, goal, target = "test_accuracy", "maximize", None
    with r.each():
        if "name" not in metric:
            raise r.fail(f"{where}.name", f"missing; allowed: {', '.join(METRICS)}")
        name = r.choice(metric["name"], f"{where}.name", METRICS)
    with r.each():
        if "goal" not in metric and name == "test_accuracy":
            raise r.fail(f"{where}.goal", "missing, and W&B's default (minimize) would "
                                          "minimize test_accuracy: write goal: maximize (or "
                                          "minimize)")
        goal = r.choice(metric.get("goal", "minimize"), f"{where}.goal", GOALS)
    with r.each():
        if "target" in metric:
            target = float(r.number(metric["target"], f"{where}.target"))
    r.check(since=before)
    for key in ("impute", "impute_while_running"):
        if key in metric:
            notes.append(f"{where}.{key}: recorded; Optuna's samplers leave failed and "
                         "running trials out rather than impute a value")
    return name, goal, target


def check_multi(r: Reader, raw: dict, objectives: tuple[Objective, ...], method: str) -> None:
    """A trade-off is searched by a sampler that handles several objectives, unpruned."""
    if len(objectives) < 2:
        return
    if method not in MULTI_METHODS:
        raise r.fail("method", f"{method} searches one objective, and metric lists "
                               f"{len(objectives)}; allowed with several: "
                               f"{', '.join(MULTI_METHODS)}")
    for key in ("pruner", "early_terminate"):
        given = raw.get(key)
        # early_terminate is W&B's Hyperband: it always prunes. A pruner may say none.
        if key in raw and (key == "early_terminate" or not (
                isinstance(given, dict) and given.get("type") == "none")):
            raise r.fail(key, "Optuna cannot prune a study of several objectives (it prunes "
                              "on one intermediate value); remove it, or give one metric")


def read_repeats(r: Reader, raw: dict, searched: set[str]) -> int:
    """How many seeds each configuration trains with (1: the config's own seed)."""
    repeats = r.integer(raw.get("repeats", 1), "repeats", 1, MAX_REPEATS)
    if repeats > 1 and "seed" in searched:
        raise r.fail("repeats", "picks each trial's seeds, so `seed` cannot also be searched "
                                "under parameters")
    return repeats


def describe(objectives: tuple[Objective, ...]) -> str:
    """'maximize test_accuracy' or 'maximize test_accuracy, minimize train_time_s'."""
    return ", ".join(f"{goal} {name}" for name, goal in objectives)


def values_text(values: Any, objectives: tuple[Objective, ...]) -> str:
    """A trial's objective values as the terminal shows them: 'test_accuracy=0.9310'."""
    if values is None:
        return "  ".join(f"{name}=-" for name, _ in objectives)
    return "  ".join(f"{name}={v:.4f}" for (name, _), v in zip(objectives, values, strict=True))


def pareto(trials: list[Any], objectives: tuple[Objective, ...]) -> list[Any]:
    """The complete trials no other complete trial dominates (no worse in every objective,
    better in one), in trial order: Optuna's `best_trials`, computed from any trial list."""
    done = [t for t in trials if t.state.name == "COMPLETE" and t.values is not None]
    signs = [1.0 if goal == "minimize" else -1.0 for _, goal in objectives]
    costs = [[s * v for s, v in zip(signs, t.values, strict=True)] for t in done]

    def dominated(i: int) -> bool:
        return any(all(a <= b for a, b in zip(other, costs[i], strict=True)) and other != costs[i]
                   for other in costs)

    return [t for i, t in enumerate(done) if not dominated(i)]
