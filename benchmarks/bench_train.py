"""Sections 1-3 of the benchmark: train step, full epoch, tracking overhead (in process)."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import mindspore
import numpy as np
from mindspore import Tensor, nn

from experiments import config as cfg
from experiments import data as D
from experiments.model import Network
from experiments.train import Prepared, Trainer, fit, make_grad_fn, use_graph_mode

MODES = ("has_aux", "no_aux", "stop_gradient")
TINY_LR = 1e-7  # timing only: keeps no_aux finite for thousands of steps


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _offline() -> D.Mnist:
    return D.load_offline_sample(reason="benchmark")


def _tiled(mnist: D.Mnist) -> D.Mnist:
    """60,000 / 10,000 digits: the offline sample repeated, MNIST's full size."""
    return D.Mnist(np.tile(mnist.train_images, (15, 1, 1)), np.tile(mnist.train_labels, 15),
                   np.tile(mnist.test_images, (10, 1, 1)), np.tile(mnist.test_labels, 10),
                   name="mnist-5k-tiled", source=mnist.source)


def _tutorial_step(mode: str):
    """The tutorial's train_step as written: PyNative, no compilation."""
    mindspore.set_context(mode=mindspore.PYNATIVE_MODE)
    model = Network()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = nn.SGD(model.trainable_params(), learning_rate=TINY_LR)
    grad_fn = make_grad_fn(model, loss_fn, optimizer.parameters, mode)

    def train_step(data, label):
        (loss, _), grads = grad_fn(data, label)
        optimizer(grads)
        return loss

    return train_step


def _time_steps(step, x: Tensor, y: Tensor, n: int, repeats: int) -> float:
    """Median ms per step; each step's loss is read, as the runner does."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            step(x, y).asnumpy()
        out.append((time.perf_counter() - start) / n * 1000)
    return _median(out)


def steps(quick: bool) -> list[dict]:
    prepared = Prepared.from_mnist(_offline())
    batches = (64,) if quick else (32, 64, 128, 256)
    n_base, n_fast, repeats = (10, 100, 2) if quick else (30, 300, 3)
    rows = []
    for mode in MODES:
        for batch in batches:
            x, y = Tensor(prepared.train_x[:batch]), Tensor(prepared.train_y[:batch])
            tutorial = _tutorial_step(mode)
            _time_steps(tutorial, x, y, 3, 1)
            base = _time_steps(tutorial, x, y, n_base, repeats)
            use_graph_mode()
            trainer = Trainer(mode)
            trainer.reset(0, TINY_LR)
            start = time.perf_counter()
            trainer.train_step(x, y).asnumpy()
            compile_s = time.perf_counter() - start
            single = _time_steps(trainer.train_step, x, y, n_fast, repeats)
            k = trainer.steps_per_call
            args = [a for _ in range(k) for a in (x, y)]
            trainer.multi_step(*args).asnumpy()  # compiles the k-step graph
            chunked = _time_steps(lambda *_, t=trainer, a=args: t.multi_step(*a), x, y,
                                  n_fast // k, repeats) / k
            rows.append({"grad_mode": mode, "batch": batch, "tutorial PyNative": base,
                         "runner, 1 step per call": single,
                         f"runner, {k} steps per call": chunked,
                         "speed-up": base / chunked, "compile s": compile_s})
    # Default @jit on the tutorial's step, for the record (2.10's executor busy-waits).
    x, y = Tensor(prepared.train_x[:64]), Tensor(prepared.train_y[:64])
    jitted = mindspore.jit(_tutorial_step("has_aux"))
    _time_steps(jitted, x, y, 3, 1)
    rows.append({"grad_mode": "has_aux", "batch": 64,
                 "tutorial PyNative": rows[1 if not quick else 0]["tutorial PyNative"],
                 "runner, 1 step per call": None, "speed-up": None, "compile s": None,
                 "default @jit": _time_steps(jitted, x, y, n_base * 3, repeats)})
    use_graph_mode()
    return rows


def _torch_epoch(prepared: Prepared, batch: int, repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    tx, ty = torch.from_numpy(prepared.train_x), torch.from_numpy(prepared.train_y).long()
    ex, ey = torch.from_numpy(prepared.test_x), torch.from_numpy(prepared.test_y).long()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(ty)).split(batch):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(tx[idx]), ty[idx])
            loss.backward()
            optimizer.step()
            loss.item()
        model.eval()
        total, correct = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(ey), 1000):
                logits = model(ex[s : s + 1000])
                total += loss_fn(logits, ey[s : s + 1000]).item()
                correct += int((logits.argmax(1) == ey[s : s + 1000]).sum())
        times.append(time.perf_counter() - start)
    return _median(times[1:])


def _tutorial_epoch(mnist: D.Mnist, batch: int) -> float:
    """The tutorial's epoch as written: MnistDataset pipeline, PyNative train and test loops."""
    with tempfile.TemporaryDirectory() as tmp:
        for split, (images, labels, _) in D.SPLITS.items():
            (Path(tmp) / split).mkdir()
            x = mnist.train_images if split == "train" else mnist.test_images
            y = mnist.train_labels if split == "train" else mnist.test_labels
            D.write_idx(Path(tmp) / split / images, x)
            D.write_idx(Path(tmp) / split / labels, y)
        train_ds = D.seed_datapipe(str(Path(tmp) / "train"), batch, shuffle=True)
        test_ds = D.seed_datapipe(str(Path(tmp) / "test"), batch)
        step = _tutorial_step("has_aux")
        model_holder = Network()
        loss_fn = nn.CrossEntropyLoss()
        start = time.perf_counter()
        for data, label in train_ds.create_tuple_iterator():
            step(data, label)
        for data, label in test_ds.create_tuple_iterator():
            pred = model_holder(data)
            loss_fn(pred, label).asnumpy()
            (pred.argmax(1) == label).asnumpy().sum()
        elapsed = time.perf_counter() - start
    use_graph_mode()
    return elapsed


def epoch(quick: bool) -> list[dict]:
    mnist = _tiled(_offline())
    start = time.perf_counter()
    prepared = Prepared.from_mnist(mnist)
    prep_s = time.perf_counter() - start
    repeats = 1 if quick else 3
    config = cfg.build({"epochs": 1})
    trainer = Trainer("has_aux")
    fit(config, prepared, trainer)  # compiles every shape once
    runner_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fit(config, prepared, trainer)
        runner_times.append(time.perf_counter() - start)
    runner = _median(runner_times)
    torch = _torch_epoch(prepared, 64, repeats)
    tutorial = None if quick else _tutorial_epoch(mnist, 64)
    return [{"what": "runner epoch (train + eval + grad diagnostics)", "seconds": runner,
             "ratio vs torch": runner / torch if torch else None,
             "ratio vs tutorial": runner / tutorial if tutorial else None},
            {"what": "PyTorch eager epoch (train + eval)", "seconds": torch,
             "ratio vs torch": 1.0 if torch else None, "ratio vs tutorial": None},
            {"what": "tutorial epoch (MnistDataset + PyNative loops)", "seconds": tutorial,
             "ratio vs torch": tutorial / torch if torch and tutorial else None,
             "ratio vs tutorial": 1.0 if tutorial else None},
            {"what": "normalise 70k digits once (per process)", "seconds": prep_s,
             "ratio vs torch": None, "ratio vs tutorial": None}]


def tracking(quick: bool) -> list[dict]:
    from experiments import tracking as tr
    from experiments.run import tracked_fit

    mnist = _tiled(_offline())
    prepared = Prepared.from_mnist(mnist)
    config = cfg.build({"epochs": 1 if quick else 2})
    trainer = Trainer("has_aux")
    fit(config, prepared, trainer)
    repeats = 1 if quick else 5
    before = os.getcwd()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        try:
            client = tr.client()
            tracked_fit(config, mnist, prepared, trainer, client, "bench", "warm-up")
            # Wall time, and wall time minus the epochs' own train+eval time: the second
            # isolates what tracking adds from the run-to-run noise of training itself.
            walls: dict[str, list[float]] = {"plain": [], "full": [], "light": []}
            extra: dict[str, list[float]] = {"plain": [], "full": [], "light": []}
            for i in range(repeats):
                for kind in walls:
                    start = time.perf_counter()
                    if kind == "plain":
                        history = fit(config, prepared, trainer)
                    else:
                        history = tracked_fit(config, mnist, prepared, trainer, client, "bench",
                                              f"{kind}-{i}", save_model=kind == "full").history
                    walls[kind].append(time.perf_counter() - start)
                    extra[kind].append(walls[kind][-1] - sum(r.epoch_time_s for r in history))
        finally:
            os.chdir(before)
    base = _median(walls["plain"])
    for kind, what in (("plain", "untracked trial"), ("full", "tracked, everything"),
                       ("light", "tracked, no model artifact")):
        added = _median(extra[kind]) - _median(extra["plain"])
        rows.append({"what": what, "epochs": config.epochs, "seconds": _median(walls[kind]),
                     "overhead vs untracked (wall)": _median(walls[kind]) / base - 1,
                     "tracking s (outside train+eval)": added,
                     "overhead (tracking s / untracked)": added / base})
    return rows
