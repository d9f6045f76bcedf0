"""The seed's functional training loop over the compiled steps, with diagnostics.

`fit(config, data, trainer, callbacks)` trains from a fresh start, top-down: per epoch,
train over shuffled batches, evaluate on the test set, compare the has_aux and no_aux
gradients on a fixed probe batch. A `Trainer` owns one network, optimizer and compiled
steps (steps.py) for one grad mode and is reset between runs, so trials in one process
compile once per shape, not once per trial. Training code never prints: progress goes
to callbacks, which callers compose.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import mindspore
import numpy as np
from mindspore import Tensor, nn

from experiments.core import devices
from experiments.core import task as tasks
from experiments.core.autodiff import grad_relation, weights_digest
from experiments.core.config import GRAD_MODES, Config
from experiments.core.data import Mnist, batch_slices, n_batches, normalize
from experiments.core.hooks import Callbacks, Diverged, EpochResult
from experiments.core.steps import (
    EvalStep,
    GradPair,
    MultiStep,
    TrainStep,
    make_grad_fn,
    make_optimizer,
    use_graph_mode,
)
from experiments.core.task_checks import TaskData
from experiments.runtime import faults, interrupts

PROBE_SIZE = 256
# Whether this process built a Trainer. Once MindSpore has run a graph it has runtime
# threads, and a fork keeps only the forking one: a forked worker then hangs at its first
# step (measured). Workers are forked only from a process that has not (`forkable`).
_built = False
STEPS_PER_CALL = 8  # train steps per compiled call; see MultiStep


@dataclass(frozen=True)
class Prepared:
    """Normalised float32 arrays, computed once per process and shared by every run."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @classmethod
    def from_mnist(cls, data: Mnist) -> Prepared:
        return cls(normalize(data.train_images), data.train_labels,
                   normalize(data.test_images), data.test_labels)

    @classmethod
    def of(cls, data: Mnist | TaskData) -> Prepared:
        """MNIST normalised as the seed does; a task's own arrays as the task gives them."""
        if isinstance(data, TaskData):
            return cls(data.train_images, data.train_labels, data.test_images,
                       data.test_labels)
        return cls.from_mnist(data)

    def probe(self) -> tuple[Tensor, Tensor]:
        """A fixed batch spread evenly over the training set (which may be sorted by class)."""
        idx = np.linspace(0, len(self.train_y) - 1, min(PROBE_SIZE, len(self.train_y)))
        idx = idx.astype(np.int64)
        return Tensor(self.train_x[idx]), Tensor(self.train_y[idx])


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean per sample
    accuracy: float  # fraction
    predictions: np.ndarray  # the predicted digit of every sample


@dataclass(frozen=True)
class Fit:
    history: list[EpochResult]
    # The final weights' predicted digits on the test set (from the last evaluation).
    predictions: np.ndarray


class Trainer:
    """One network, optimizer and compiled steps for one grad mode, reusable across runs.

    What it is built from (the task, its keys, the optimizer) is `shape_of(config)`: runs
    that differ only in seed, learning rate, batch size or epochs share one trainer.
    """

    def __init__(self, grad_mode: str, steps_per_call: int = STEPS_PER_CALL, *,
                 config: Config | None = None, task: tasks.Task | None = None) -> None:
        global _built
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
        use_graph_mode()
        _built = True
        self.task = task or tasks.load(tasks.locate((config or Config()).task))
        self.config = self.task.file.complete(
            dataclasses.replace(config or Config(), grad_mode=grad_mode))
        self.shape = shape_of(self.config)
        self.grad_mode = grad_mode
        self.init_digest = ""
        self.model = self.task.network(self.config)
        self.loss_fn = self.task.loss or nn.CrossEntropyLoss()
        self.optimizer = make_optimizer(self.config.optimizer, self.model.trainable_params(),
                                        self.config.momentum, self.config.weight_decay)
        params = self.optimizer.parameters
        self.train_step = TrainStep(
            make_grad_fn(self.model, self.loss_fn, params, grad_mode), self.optimizer
        )
        self.steps_per_call = steps_per_call
        self.multi_step = MultiStep(self.train_step, steps_per_call)
        self.eval_step = EvalStep(self.model, self.task.loss)
        self.grad_pair = GradPair(make_grad_fn(self.model, self.loss_fn, params, "has_aux"),
                                  make_grad_fn(self.model, self.loss_fn, params, "no_aux"))
        self._compiled: set[tuple[int, ...]] = set()  # step-call shapes compiled so far
        self._epochs: set[tuple[int, int]] = set()  # (samples, batch size) epochs covered
        weights = {id(p) for p in self.model.get_parameters()}
        # Optimizer state (step counter, accumulators) as constructed, restored by reset().
        self._initial_state = [(p, p.asnumpy().copy()) for p in self.optimizer.get_parameters()
                               if id(p) not in weights and p.name != "learning_rate"]

    def reset(self, seed: int, learning_rate: float) -> None:
        """Weights as a fresh network under `seed`, fresh optimizer state, new lr."""
        mindspore.set_seed(seed)
        fresh = self.task.network(self.config)
        for param, init in zip(self.model.get_parameters(), fresh.get_parameters(), strict=True):
            param.set_data(Tensor(init.asnumpy()))
        for param, value in self._initial_state:
            param.set_data(Tensor(value))
        self.optimizer.learning_rate.set_data(Tensor(learning_rate, mindspore.float32))
        self.init_digest = weights_digest(self.weights())

    def weights(self) -> list[np.ndarray]:
        return [p.asnumpy().copy() for p in self.model.trainable_params()]

    def train_epoch(self, data: Prepared, batch_size: int, rng: np.random.Generator,
                    epoch: int, callbacks: Callbacks) -> float:
        """One pass over shuffled training data; returns the per-sample mean loss."""
        self.model.set_train()
        n = len(data.train_y)
        callbacks.on_epoch_start(epoch, n_batches(n, batch_size))
        total, losses = 0.0, []
        for idx in self._calls(batch_slices(n, batch_size, rng), batch_size):
            for loss, size in self._call(data, idx):
                losses.append(loss)
                if not math.isfinite(loss):
                    raise Diverged(epoch, len(losses), losses)
                total += loss * size
                callbacks.on_step(epoch, len(losses))
        return total / n

    def _call(self, data: Prepared, idx: np.ndarray) -> list[tuple[float, int]]:
        """One compiled call: a batch, or a chunk of k full batches (idx of shape (k, b));
        returns each step's (loss, batch size)."""
        x, y = data.train_x[idx], data.train_y[idx]
        with interrupts.shielded():  # no KeyboardInterrupt inside MindSpore's graph code
            if idx.ndim == 2:
                args = [Tensor.from_numpy(a) for pair in zip(x, y, strict=True) for a in pair]
                return [(float(v), idx.shape[1]) for v in self.multi_step(*args).asnumpy()]
            out = self.train_step(Tensor.from_numpy(x), Tensor.from_numpy(y)).asnumpy()
            return [(float(out), len(idx))]

    def compiled(self, data: Prepared, batch_size: int) -> bool:
        """Whether every step call of an epoch of `data` in batches of `batch_size` is."""
        return (len(data.train_y), batch_size) in self._epochs

    def compile_for(self, data: Prepared, batch_size: int) -> None:
        """Compile each step call of an epoch (one call per new shape) before the timed
        epochs: train_time_s then counts training, not MindSpore's one-time graph compile
        (about 1 s per shape, measured). The weights these calls move are put back by
        reset(), so results stay bit-identical."""
        epoch = (len(data.train_y), batch_size)
        if epoch in self._epochs:  # every call shape of such an epoch is compiled
            return
        self.model.set_train()
        for idx in self._calls(batch_slices(len(data.train_y), batch_size, None), batch_size):
            if idx.shape not in self._compiled:
                interrupts.check()  # a compile takes ~1 s: Ctrl-C is honoured between them
                self._call(data, idx)
                self._compiled.add(idx.shape)
        self._epochs.add(epoch)

    def _calls(self, slices: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
        """Group consecutive full batches by `steps_per_call`; the order never changes."""
        pending: list[np.ndarray] = []
        for idx in slices:
            if self.steps_per_call > 1 and len(idx) == batch_size:
                pending.append(idx)
                if len(pending) == self.steps_per_call:
                    yield np.stack(pending)
                    pending = []
                continue
            yield from pending
            pending = []
            yield idx
        yield from pending

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> Evaluation:
        """Mean loss, accuracy and predictions over exactly len(y) samples."""
        self.model.set_train(False)
        loss_sum, correct, predicted = 0.0, 0.0, []
        for start in range(0, len(y), batch_size):
            faults.point("evaluate")
            with interrupts.shielded():
                loss, hits, labels = self.eval_step(
                    Tensor.from_numpy(x[start : start + batch_size]),
                    Tensor.from_numpy(y[start : start + batch_size]))
            loss_sum += float(loss.asnumpy())
            correct += float(hits.asnumpy())
            predicted.append(labels.asnumpy())
        return Evaluation(loss_sum / len(y), correct / len(y), np.concatenate(predicted))

    def gradients(self, data: Tensor, label: Tensor) -> dict[str, list[np.ndarray]]:
        """The has_aux and no_aux gradients of this batch, without touching the weights."""
        with interrupts.shielded():
            aux, no_aux = self.grad_pair(data, label)
        return {"has_aux": [g.asnumpy() for g in aux], "no_aux": [g.asnumpy() for g in no_aux]}


def forkable() -> bool:
    """Whether a fork of this process can still train (no Trainer built here yet)."""
    return not _built


def shape_of(config: Config) -> tuple:
    """What a trainer is built from: runs equal in it can share one trainer."""
    return (config.task, config.model, config.optimizer, config.momentum, config.weight_decay,
            config.grad_mode)


# Trainers kept per process, the most recently used last. A sweep over a task's own key
# (a width) builds one per value; the oldest are let go, graphs and all.
_trainers: dict[tuple, Trainer] = {}
KEPT_TRAINERS = 8


def trainer_for(config: Config, task: tasks.Task | None = None) -> Trainer:
    """The process's trainer for this config's shape. Compiling the steps costs seconds and
    `fit` resets the trainer, so every training in a process (trials, sweeps) shares one."""
    key = shape_of(config)
    trainer = _trainers.pop(key, None) or Trainer(config.grad_mode, config=config, task=task)
    _trainers[key] = trainer
    while len(_trainers) > KEPT_TRAINERS:
        del _trainers[next(iter(_trainers))]
    return trainer


def fit(config: Config, data: Prepared, trainer: Trainer,
        callbacks: Callbacks | None = None) -> Fit:
    """Train `config.epochs` epochs from a fresh start; raises Diverged on a NaN/inf loss."""
    config = trainer.task.file.complete(config)  # the task's keys at their defaults
    if trainer.shape != shape_of(config):
        raise ValueError(f"trainer is for {trainer.shape}, config wants {shape_of(config)}")
    devices.use(config.device, config.device_id)  # the device recorded is the one that trains
    callbacks = callbacks or Callbacks()
    if not trainer.compiled(data, config.batch_size):
        callbacks.on_compile(config.batch_size, config.grad_mode)
    trainer.compile_for(data, config.batch_size)
    trainer.reset(config.seed, config.learning_rate)
    # The data order depends on the seed only, so paired grad modes see the same batches.
    rng = np.random.default_rng(config.seed)
    probe = data.probe()
    history: list[EpochResult] = []
    evaluation = None
    trained_s = 0.0
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        train_loss = trainer.train_epoch(data, config.batch_size, rng, epoch, callbacks)
        trained_s += time.perf_counter() - start
        evaluation = trainer.evaluate(data.test_x, data.test_y, config.data.eval_batch_size)
        elapsed = time.perf_counter() - start
        grads = trainer.gradients(*probe)
        cosine, ratio = grad_relation(grads["has_aux"], grads["no_aux"])
        result = EpochResult(epoch, train_loss, evaluation.loss, evaluation.accuracy, cosine,
                             ratio, elapsed, trained_s)
        history.append(result)
        callbacks.on_epoch_end(result)
    assert evaluation is not None  # epochs >= 1
    return Fit(history, evaluation.predictions)
