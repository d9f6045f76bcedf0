"""Sections 2-3 of the benchmark: a full epoch and tracking overhead (in process)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from mindspore import nn

from benchmarks import bench_common as C
from experiments.core import config as cfg
from experiments.core import data as D
from experiments.core.model import Network
from experiments.core.steps import use_graph_mode
from experiments.core.train import Prepared, Trainer, fit
from experiments.tracking import store as tr
from experiments.tracking.tracked_fit import TrackContext, tracked_fit


def _torch_model(name: str):
    """The task's network in PyTorch, layer for layer: the seed's MLP, or LeNet-5 as
    experiments/core/tasks/lenet.py builds it."""
    import torch
    from torch import nn as tnn

    if name == "lenet":
        return tnn.Sequential(
            tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2, 2),
            tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2, 2), tnn.Flatten(),
            tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
            tnn.Linear(84, 10))
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, 10))


def _torch_epochs(prepared: Prepared, batch: int, repeats: int, task: str = "mlp"
                  ) -> list[float]:
    """Seconds per PyTorch eager epoch (train + eval), after one untimed warm-up epoch."""
    try:
        import torch
    except ImportError:
        return []
    torch.manual_seed(0)
    model = _torch_model(task)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    tx, ty = torch.from_numpy(prepared.train_x), torch.from_numpy(prepared.train_y).long()
    ex, ey = torch.from_numpy(prepared.test_x), torch.from_numpy(prepared.test_y).long()

    def one_epoch() -> None:
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

    return C.timed(one_epoch, repeats)


def _tutorial_epochs(mnist: D.Mnist, batch: int, repeats: int) -> list[float]:
    """Seconds per epoch of the tutorial as written: MnistDataset pipeline, PyNative loops.

    One untimed pass over the offline sample first pays the first-call costs (the
    pipeline's start-up, PyNative's kernel selection for each shape) at a fraction of a
    full epoch's price.
    """
    step = C.tutorial_step("has_aux", 1e-2)
    model_holder = Network()
    loss_fn = nn.CrossEntropyLoss()

    def one_epoch(train_ds, test_ds) -> None:
        for data, label in train_ds.create_tuple_iterator():
            step(data, label)
        for data, label in test_ds.create_tuple_iterator():
            pred = model_holder(data)
            loss_fn(pred, label).asnumpy()
            (pred.argmax(1) == label).asnumpy().sum()

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, digits, times in (("warm-up", C.offline(), 0), ("timed", mnist, repeats)):
            for split, (images, labels, _) in D.SPLITS.items():
                (Path(tmp) / name / split).mkdir(parents=True)
                x = digits.train_images if split == "train" else digits.test_images
                y = digits.train_labels if split == "train" else digits.test_labels
                D.write_idx(Path(tmp) / name / split / images, x)
                D.write_idx(Path(tmp) / name / split / labels, y)
            train_ds = D.seed_datapipe(str(Path(tmp) / name / "train"), batch, shuffle=True)
            test_ds = D.seed_datapipe(str(Path(tmp) / name / "test"), batch)
            if not times:
                one_epoch(train_ds, test_ds)
            out += C.timed(lambda a=train_ds, b=test_ds: one_epoch(a, b), times, warmup=0)
    use_graph_mode()
    return out


def epoch(quick: bool) -> list[dict]:
    # Quick runs use the offline sample as is: the tutorial's 60k epoch alone takes ~100 s.
    mnist, data = (C.offline(), C.OFFLINE) if quick else (C.tiled(), C.TILED)
    repeats = 2 if quick else 3
    Prepared.from_mnist(C.offline())  # warm-up: NumPy's first allocations and casts
    prep = C.timed(lambda: Prepared.from_mnist(mnist), repeats, warmup=0)
    prepared = Prepared.from_mnist(mnist)
    config = cfg.build({"epochs": 1})
    trainer = Trainer("has_aux")
    runner = C.timed(lambda: fit(config, prepared, trainer), repeats)  # warm-up compiles
    torch = _torch_epochs(prepared, 64, repeats)
    tutorial = _tutorial_epochs(mnist, 64, repeats)
    load = C.workload(data, batch=64, epochs=1, other="train + test")
    what = "epoch, runner (train + eval + grad diagnostics)"
    rows = [C.row(what, load, "s", runner, "the tutorial's own epoch (MnistDataset + "
                  "PyNative loops)", tutorial, style="speed", readme=True)]
    if torch:
        rows.append(C.row(what, load, "s", runner, "PyTorch eager epoch (train + eval)", torch,
                          style="speed", readme=True))
    # LeNet-5 (task: lenet): the same epoch, a convolutional network.
    lenet = cfg.build({"epochs": 1, "task": "lenet"})
    lenet_trainer = Trainer("has_aux", config=lenet)
    runner_lenet = C.timed(lambda: fit(lenet, prepared, lenet_trainer), repeats)
    torch_lenet = _torch_epochs(prepared, 64, repeats, "lenet")
    if torch_lenet:
        rows.append(C.row("epoch, runner, task lenet (LeNet-5; train + eval + grad "
                          "diagnostics)", load, "s", runner_lenet,
                          "PyTorch eager LeNet-5 epoch (train + eval)", torch_lenet,
                          style="speed", readme=True))
    rows.append(C.row("normalise the digits (once per process)",
                      C.workload(data, other="train + test"), "s", prep))
    return rows


def tracking(quick: bool) -> list[dict]:
    """A tracked trial against the same trial untracked, on the offline sample (where a
    trial is short and tracking weighs most) and, in a full run, on 60k images."""
    rows = _tracking(C.offline(), C.OFFLINE, 1 if quick else 3, 2 if quick else 5)
    if not quick:
        rows += _tracking(C.tiled(), C.TILED, 2, 5)
    return rows


def _tracking(mnist, data: str, epochs: int, repeats: int) -> list[dict]:
    prepared = Prepared.from_mnist(mnist)
    config = cfg.build({"epochs": epochs})
    trainer = Trainer("has_aux")
    fit(config, prepared, trainer)
    before = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        try:
            ctx = TrackContext(tr.client(), mnist, prepared, "bench")
            tracked_fit(ctx, config, trainer, "warm-up")
            # Wall time, and wall time minus the epochs' own train+eval time: the second
            # isolates what tracking adds from the run-to-run noise of training itself.
            walls: dict[str, list[float]] = {"plain": [], "full": [], "light": []}
            extra: dict[str, list[float]] = {"plain": [], "full": [], "light": []}
            for i in range(repeats):
                for kind in walls:
                    start = time.perf_counter()
                    if kind == "plain":
                        history = fit(config, prepared, trainer).history
                    else:
                        history = tracked_fit(ctx, config, trainer, f"{kind}-{i}",
                                              save_model=kind == "full").history
                    walls[kind].append(time.perf_counter() - start)
                    extra[kind].append(walls[kind][-1] - sum(r.epoch_time_s for r in history))
        finally:
            os.chdir(before)
    load = C.workload(data, batch=64, epochs=config.epochs, trials=1)
    rows = []
    for kind, what in (("full", "params, metrics, dataset, 3 pictures, the model"),
                       ("light", "the same without the model artifact")):
        # Paired by repeat: what this tracked trial spent outside train+eval, minus what
        # the untracked trial of the same round spent there.
        added = [e - p for e, p in zip(extra[kind], extra["plain"], strict=True)]
        rows.append(C.row(f"tracking a trial: {what} (s outside train + eval)", load, "s",
                          added, "the untracked trial (wall)", walls["plain"],
                          style="percent", readme=kind == "full"))
        rows.append(C.row(f"tracked trial, {what} (wall)", load, "s", walls[kind],
                          "the untracked trial (wall)", walls["plain"]))
    return rows
