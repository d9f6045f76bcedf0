"""Section 1 of the benchmark: the train step, compiled by the runner vs the tutorial's."""

from __future__ import annotations

import time
from collections.abc import Callable

import mindspore
from mindspore import Tensor

from benchmarks import bench_common as C
from experiments.core.steps import use_graph_mode
from experiments.core.train import STEPS_PER_CALL, Prepared, Trainer

MODES = ("has_aux", "no_aux", "stop_gradient")
BATCHES = (32, 64, 128, 256)


def _ms_per_step(step: Callable, args: list[Tensor], calls: int, steps_per_call: int,
                 repeats: int) -> list[float]:
    """ms per train step, one value per repeat; every call's loss is read, as the runner does.

    Three untimed calls first: the first compiles (or, in PyNative, selects kernels).
    """
    def run() -> None:
        for _ in range(calls):
            step(*args).asnumpy()

    for _ in range(3):
        step(*args).asnumpy()
    return [s / (calls * steps_per_call) * 1000 for s in C.timed(run, repeats, warmup=0)]


def _compile_s(mode: str, x: Tensor, y: Tensor, multi: bool, repeats: int) -> list[float]:
    """Seconds of a fresh Trainer's first call: the graph is compiled again for each one.

    Called after the process has compiled the same graphs once, so the runtime's one-off
    start-up (paid by the first compile of a process only) is not counted.
    """
    out = []
    for _ in range(repeats):
        trainer = Trainer(mode)
        trainer.reset(0, C.TINY_LR)
        step = trainer.multi_step if multi else trainer.train_step
        args = [x, y] * (trainer.steps_per_call if multi else 1)
        start = time.perf_counter()
        step(*args).asnumpy()
        out.append(time.perf_counter() - start)
    return out


def steps(quick: bool) -> list[dict]:
    prepared = Prepared.from_mnist(C.offline())
    batches = (64,) if quick else BATCHES
    n_base, n_fast, repeats = (8, 80, 2) if quick else (30, 200, 3)
    rows, tutorial_ms = [], {}
    for mode in MODES:
        for batch in batches:
            x, y = Tensor(prepared.train_x[:batch]), Tensor(prepared.train_y[:batch])
            base = _ms_per_step(C.tutorial_step(mode), [x, y], n_base, 1, repeats)
            tutorial_ms[mode, batch] = base
            use_graph_mode()
            trainer = Trainer(mode)
            trainer.reset(0, C.TINY_LR)
            k = trainer.steps_per_call
            single = _ms_per_step(trainer.train_step, [x, y], n_fast, 1, repeats)
            chunked = _ms_per_step(trainer.multi_step, [x, y] * k, n_fast // k, k, repeats)
            load = C.workload(C.OFFLINE, batch=batch,
                              other=f"{n_fast} steps per repeat (tutorial: {n_base})")
            rows.append(C.row(
                f"train step, {mode}, runner ({k} steps per compiled call)", load, "ms/step",
                chunked, "tutorial's PyNative step", base, style="speed",
                readme=batch == 64 or mode == "has_aux"))
            rows.append(C.row(
                f"train step, {mode}, runner with 1 step per compiled call", load, "ms/step",
                single, f"the runner's {k} steps per call", chunked, style="speed",
                readme=batch == 64 and mode == "has_aux"))
    # Default @jit on the tutorial's step, for the record (2.10's executor busy-waits).
    x, y = Tensor(prepared.train_x[:64]), Tensor(prepared.train_y[:64])
    jitted = mindspore.jit(C.tutorial_step("has_aux"))
    rows.append(C.row(
        "train step, has_aux, default @mindspore.jit on the tutorial's step",
        C.workload(C.OFFLINE, batch=64, other=f"{n_base * 3} steps per repeat"), "ms/step",
        _ms_per_step(jitted, [x, y], n_base * 3, 1, repeats), "tutorial's PyNative step",
        tutorial_ms["has_aux", 64], style="speed", readme=True))
    use_graph_mode()
    for mode in MODES:
        for multi, label in ((False, "1-step graph"), (True, f"{STEPS_PER_CALL}-step graph")):
            rows.append(C.row(
                f"compile, {mode}, {label}: a fresh Trainer's first call",
                C.workload(C.OFFLINE, batch=64), "s",
                _compile_s(mode, x, y, multi, repeats),
                readme=mode == "has_aux",
                note="a process's first compile also pays the runtime's start-up"))
    return rows
