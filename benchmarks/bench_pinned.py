"""Section 7's subprocess: the train step's time on one core, MindSpore or PyTorch.

    python -m benchmarks.bench_pinned mindspore|torch REPEATS STEPS

pins itself to core 0, then prints a JSON list: ms per train step (batch 64, the tutorial's
MLP, SGD, every loss read), one value per repeat of STEPS steps, after a warm-up.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np

BATCH = 64


def _mindspore(x: np.ndarray, y: np.ndarray, repeats: int, steps: int) -> list[float]:
    """The runner's step: a compiled call of STEPS_PER_CALL steps, as a trial runs it."""
    from mindspore import Tensor

    from experiments.core.train import Trainer

    trainer = Trainer("has_aux")
    trainer.reset(0, 1e-7)
    k = trainer.steps_per_call
    args = [Tensor(x), Tensor(y)] * k
    return _time(lambda: trainer.multi_step(*args).asnumpy(), repeats, steps // k, k)


def _torch(x: np.ndarray, y: np.ndarray, repeats: int, steps: int) -> list[float]:
    """The same MLP and SGD step in PyTorch eager."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-7)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y).long()

    def step() -> None:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tx), ty)
        loss.backward()
        optimizer.step()
        loss.item()

    return _time(step, repeats, steps, 1)


def _time(call: Callable[[], object], repeats: int, calls: int,
          steps_per_call: int) -> list[float]:
    for _ in range(3):  # the first call compiles (MindSpore) or allocates (PyTorch)
        call()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        out.append((time.perf_counter() - start) / (calls * steps_per_call) * 1000)
    return out


def main() -> int:
    framework, repeats, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # As `taskset -c 0` would, but before any library has started a thread, so every
    # thread either framework starts inherits the one-core mask.
    os.sched_setaffinity(0, {0})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int32)
    measure = _mindspore if framework == "mindspore" else _torch
    print(json.dumps(measure(x, y, repeats, steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
