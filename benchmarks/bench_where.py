"""Section 7 of the benchmark: where the step's time goes (the README's design notes)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
from mindspore import Tensor, nn, ops

from benchmarks import bench_common as C
from experiments.core.steps import use_graph_mode
from experiments.core.train import Prepared, Trainer

# Matmuls per chain. The slope between the two is one matmul's cost; the short chain is a
# single matmul so that the per-call cost (its time less one slope) inherits little of the
# slope's noise.
SHORT, LONG = 1, 33


class _Chain(nn.Cell):
    """x @ w, k times, in one compiled graph."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def construct(self, x, w):
        for _ in range(self.k):
            x = ops.matmul(x, w)
        return x


class _StackedMultiStep(nn.Cell):
    """MultiStep as it was first written: the k batches as one stacked input, sliced inside."""

    def __init__(self, step: nn.Cell, k: int) -> None:
        super().__init__(auto_prefix=False)
        self.step = step
        self.k = k

    def construct(self, xs, ys):
        losses = ()
        for i in range(self.k):
            losses = (*losses, self.step(xs[i], ys[i]))
        return ops.stack(losses)


def _alternate(calls: dict[str, Callable[[], object]], n: int, repeats: int) -> dict:
    """Seconds per call of each, timed in turns (n calls per turn) after 3 untimed calls.

    Taking turns within each repeat lets a slow spell of the shared machine hit them alike.
    """
    for call in calls.values():
        for _ in range(3):
            call()
    out: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(n):
                call()
            out[name].append((time.perf_counter() - start) / n)
    return out


def _marginal(t: dict) -> tuple[list[float], list[float]]:
    """(ms per extra matmul, ms per call apart from the matmuls), one pair per repeat.

    The slope between the short and the long chain of the same repeat is one matmul's
    cost free of the per-call cost; the short chain's time less its matmuls is the latter.
    """
    per = [(lo - sh) / (LONG - SHORT) * 1000 for sh, lo in zip(t["short"], t["long"],
                                                                strict=True)]
    call = [sh * 1000 - SHORT * p for sh, p in zip(t["short"], per, strict=True)]
    return per, call


def _torch_chain(x: np.ndarray, w: np.ndarray, n: int, repeats: int) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)

    def chain(k: int) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                y = tx
                for _ in range(k):
                    y = y @ tw
                return y.sum().item()
        return run

    return _alternate({"short": chain(SHORT), "long": chain(LONG)}, n, repeats)


def _pinned(framework: str, repeats: int, steps: int) -> list[float]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_pinned", framework,
                          str(repeats), str(steps)], cwd=C.ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def where(quick: bool) -> list[dict]:
    repeats, n = (2, 10) if quick else (3, 30)
    use_graph_mode()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 512), dtype=np.float32)
    # Scaled so the chain's values keep their size: no overflow, no denormals.
    w = (rng.standard_normal((512, 512)) / math.sqrt(512)).astype(np.float32)
    mx, mw = Tensor(x), Tensor(w)
    short, long = _Chain(SHORT), _Chain(LONG)
    ms = _alternate({"short": lambda: short(mx, mw).asnumpy(),
                     "long": lambda: long(mx, mw).asnumpy()}, n, repeats)
    ms_per, ms_call = _marginal(ms)
    chain_load = C.workload(f"synthetic 64x512 @ 512x512, float32, calls of {SHORT} and "
                            f"{LONG} chained matmuls", other=f"{n} calls per repeat")
    rows = []
    pt = _torch_chain(x, w, n, repeats)
    if pt:
        pt_per, _ = _marginal(pt)
        rows.append(C.row("one more 64x512 @ 512x512 matmul in a chain, MindSpore compiled",
                          chain_load, "ms", ms_per, "PyTorch eager", pt_per, style="speed",
                          readme=True))
    rows.append(C.row("a compiled call's cost apart from its matmuls, MindSpore", chain_load,
                      "ms", ms_call, readme=True,
                      note="the 1-matmul call's time less one matmul: launch and runtime"))

    # MultiStep's inputs: separate batches (as shipped) vs one stacked tensor sliced inside.
    prepared = Prepared.from_mnist(C.offline())
    trainer = Trainer("has_aux")
    trainer.reset(0, C.TINY_LR)
    k = trainer.steps_per_call
    bx, by = prepared.train_x[:64], prepared.train_y[:64]
    separate = [Tensor(bx), Tensor(by)] * k
    stacked = _StackedMultiStep(trainer.train_step, k)
    xs, ys = Tensor(np.stack([bx] * k)), Tensor(np.stack([by] * k))
    calls = 10 if quick else 25
    t = _alternate({"separate": lambda: trainer.multi_step(*separate).asnumpy(),
                    "stacked": lambda: stacked(xs, ys).asnumpy()}, calls, repeats)
    per_step = {name: [s / k * 1000 for s in v] for name, v in t.items()}
    rows.append(C.row(f"{k} steps per call, batches as {2 * k} separate inputs (as shipped)",
                      C.workload(C.OFFLINE, batch=64, other=f"{calls * k} steps per repeat"),
                      "ms/step", per_step["separate"],
                      f"one stacked ({k}, 64, 1, 28, 28) input sliced in the graph",
                      per_step["stacked"], style="speed", readme=True))

    steps = 80 if quick else 200
    rows.append(C.row(
        "train step pinned to one core (a subprocess), MindSpore, runner's step",
        C.workload("synthetic batch", batch=64, other=f"{steps} steps per repeat, core 0"),
        "ms/step", _pinned("mindspore", repeats, steps), "PyTorch eager, same MLP and SGD",
        _pinned("torch", repeats, steps) if pt else None, style="speed", readme=True))
    return rows
