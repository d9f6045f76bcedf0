"""The seed's functional training loop, compiled, with autodiff diagnostics.

The loop keeps the tutorial's shape: `forward_fn(data, label) -> (loss, logits)`,
`grad_fn = value_and_grad(forward_fn, None, optimizer.parameters, has_aux=...)` and
`optimizer(grads)`. The step runs inside an `nn.Cell` under GRAPH_MODE: measured on two
cores it costs ~3-5 ms against ~45 ms in PyNative, and unlike default `@jit` in 2.10 it
does not busy-wait a core away, and unlike `capture_mode="trace"` it really trains.

A `Trainer` owns one network, optimizer and compiled steps for one grad mode and is
reset between runs, so trials in one process compile once per shape, not once per trial.
Training code never prints: progress goes to callbacks.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import mindspore
import numpy as np
from mindspore import Tensor, nn, ops

from experiments import faults
from experiments.autodiff import grad_relation, weights_digest
from experiments.config import GRAD_MODES, Config
from experiments.data import Mnist, batch_slices, n_batches, normalize
from experiments.model import Network

PROBE_SIZE = 256
STEPS_PER_CALL = 8  # train steps per compiled call; see MultiStep


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, losses: list[float]) -> None:
        super().__init__(f"loss became {losses[-1]} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, losses[-1]
        self.losses = losses  # every step's loss in the epoch that diverged


class Stop(Exception):
    """Raised by an epoch-end callback to end training early (a pruned trial, say)."""

    def __init__(self, state: str, reason: str = "") -> None:
        super().__init__(reason or state)
        self.state = state


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    grad_cosine: float
    grad_norm_ratio: float
    epoch_time_s: float

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if k != "epoch"}


@dataclass
class Callbacks:
    """Hooks the loop calls; the CLI renders them, the sweep reports them to Optuna."""

    on_epoch_start: Callable[[int, int], None] = lambda epoch, n_steps: None
    on_step: Callable[[int, int], None] = lambda epoch, step: None
    # May raise (optuna.TrialPruned, say) to stop training after this epoch is recorded.
    on_epoch_end: list[Callable[[EpochResult], None]] = field(default_factory=list)


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

    def probe(self) -> tuple[Tensor, Tensor]:
        """A fixed batch spread evenly over the training set (which may be sorted by class)."""
        idx = np.linspace(0, len(self.train_y) - 1, min(PROBE_SIZE, len(self.train_y)))
        idx = idx.astype(np.int64)
        return Tensor(self.train_x[idx]), Tensor(self.train_y[idx])


def make_forward_fn(model: nn.Cell, loss_fn: nn.Cell, grad_mode: str) -> Callable:
    """The seed's forward_fn; `stop_gradient` cuts the logits out of the gradient."""

    def forward_fn(data, label):
        logits = model(data)
        loss = loss_fn(logits, label)
        if grad_mode == "stop_gradient":
            return loss, ops.stop_gradient(logits)
        return loss, logits

    return forward_fn


def make_grad_fn(model: nn.Cell, loss_fn: nn.Cell, params: list, grad_mode: str) -> Callable:
    """`has_aux=False` makes the gradient that of loss + sum(logits), as the seed explains."""
    forward_fn = make_forward_fn(model, loss_fn, grad_mode)
    return mindspore.value_and_grad(forward_fn, None, params, has_aux=grad_mode == "has_aux")


class TrainStep(nn.Cell):
    def __init__(self, grad_fn: Callable, optimizer: nn.Optimizer) -> None:
        super().__init__(auto_prefix=False)
        self.grad_fn = grad_fn
        self.optimizer = optimizer

    def construct(self, data, label):
        (loss, _), grads = self.grad_fn(data, label)
        self.optimizer(grads)
        return loss


class MultiStep(nn.Cell):
    """k train steps, one after the other, in one compiled call.

    On CPU each call pays a launch cost of a few ms whatever the batch; k steps per call pay
    it once. The batches come as 2k separate arguments (x0, y0, x1, y1, ...) rather than
    one stacked tensor, because slicing a stacked 5-D input inside the graph costs more
    than a step's matmuls (measured: 6.4 -> 4.7 ms per step at batch 64, k=8). Updates
    happen in the same order on the same batches, so the results equal k single steps.
    """

    def __init__(self, step: TrainStep, k: int) -> None:
        super().__init__(auto_prefix=False)
        self.step = step
        self.k = k

    def construct(self, *batches):
        losses = ()
        for i in range(self.k):
            losses = (*losses, self.step(batches[2 * i], batches[2 * i + 1]))
        return ops.stack(losses)


class EvalStep(nn.Cell):
    """Summed loss, correct count and predicted digits of a batch.

    Sums let the epoch average per sample exactly; the predictions feed the run's figures
    without a second pass over the test set.
    """

    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.loss_fn = nn.CrossEntropyLoss(reduction="sum")

    def construct(self, data, label):
        logits = self.model(data)
        predicted = logits.argmax(1).astype(mindspore.int32)
        correct = (predicted == label).astype(mindspore.float32).sum()
        return self.loss_fn(logits, label), correct, predicted


class GradPair(nn.Cell):
    """The has_aux and no_aux gradients of one batch, in one compiled graph."""

    def __init__(self, aux_fn: Callable, no_aux_fn: Callable) -> None:
        super().__init__(auto_prefix=False)
        self.aux_fn = aux_fn
        self.no_aux_fn = no_aux_fn

    def construct(self, data, label):
        _, aux = self.aux_fn(data, label)
        _, no_aux = self.no_aux_fn(data, label)
        return aux, no_aux


def use_graph_mode() -> None:
    # Once the runtime has started (on its CPU device) the device can no longer be set.
    with contextlib.suppress(RuntimeError):
        mindspore.set_device("CPU")
    mindspore.set_context(mode=mindspore.GRAPH_MODE)


class Trainer:
    """One network, optimizer and compiled steps for one grad mode, reusable across runs."""

    def __init__(self, grad_mode: str, steps_per_call: int = STEPS_PER_CALL) -> None:
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
        use_graph_mode()
        self.grad_mode = grad_mode
        self.init_digest = ""
        self.predictions = np.zeros(0, np.int32)  # of the last evaluate()
        self.model = Network()
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer = nn.SGD(self.model.trainable_params(), learning_rate=1e-2)
        params = self.optimizer.parameters
        self.train_step = TrainStep(
            make_grad_fn(self.model, self.loss_fn, params, grad_mode), self.optimizer
        )
        self.steps_per_call = steps_per_call
        self.multi_step = MultiStep(self.train_step, steps_per_call)
        self.eval_step = EvalStep(self.model)
        self.grad_pair = GradPair(make_grad_fn(self.model, self.loss_fn, params, "has_aux"),
                                  make_grad_fn(self.model, self.loss_fn, params, "no_aux"))
        weights = {id(p) for p in self.model.get_parameters()}
        # Optimizer state (step counter, accumulators) as constructed, restored by reset().
        self._initial_state = [(p, p.asnumpy().copy()) for p in self.optimizer.get_parameters()
                               if id(p) not in weights and p.name != "learning_rate"]

    def reset(self, seed: int, learning_rate: float) -> None:
        """Weights as a fresh `Network()` under `seed`, fresh optimizer state, new lr."""
        mindspore.set_seed(seed)
        fresh = Network()
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
            x, y = data.train_x[idx], data.train_y[idx]
            if idx.ndim == 2:  # a chunk of k full batches in one compiled call
                args = [Tensor.from_numpy(a) for pair in zip(x, y, strict=True) for a in pair]
                out = self.multi_step(*args).asnumpy()
                chunk = [(float(v), batch_size) for v in out]
            else:
                out = self.train_step(Tensor.from_numpy(x), Tensor.from_numpy(y)).asnumpy()
                chunk = [(float(out), len(idx))]
            for loss, size in chunk:
                losses.append(loss)
                if not math.isfinite(loss):
                    raise Diverged(epoch, len(losses), losses)
                total += loss * size
                callbacks.on_step(epoch, len(losses))
        return total / n

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

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float]:
        """(mean loss per sample, accuracy as a fraction) over exactly len(y) samples.

        The predicted digits are kept in `self.predictions` until the next call.
        """
        self.model.set_train(False)
        loss_sum, correct, predicted = 0.0, 0.0, []
        for start in range(0, len(y), batch_size):
            faults.point("evaluate")
            loss, hits, labels = self.eval_step(
                Tensor.from_numpy(x[start : start + batch_size]),
                Tensor.from_numpy(y[start : start + batch_size]))
            loss_sum += float(loss.asnumpy())
            correct += float(hits.asnumpy())
            predicted.append(labels.asnumpy())
        self.predictions = np.concatenate(predicted)
        return loss_sum / len(y), correct / len(y)

    def gradients(self, data: Tensor, label: Tensor) -> dict[str, list[np.ndarray]]:
        """The has_aux and no_aux gradients of this batch, without touching the weights."""
        aux, no_aux = self.grad_pair(data, label)
        return {"has_aux": [g.asnumpy() for g in aux], "no_aux": [g.asnumpy() for g in no_aux]}


def fit(config: Config, data: Prepared, trainer: Trainer,
        callbacks: Callbacks | None = None) -> list[EpochResult]:
    """Train `config.epochs` epochs from a fresh start; raises Diverged on a NaN/inf loss."""
    if trainer.grad_mode != config.grad_mode:
        raise ValueError(f"trainer is for {trainer.grad_mode}, config wants {config.grad_mode}")
    callbacks = callbacks or Callbacks()
    trainer.reset(config.seed, config.learning_rate)
    # The data order depends on the seed only, so paired grad modes see the same batches.
    rng = np.random.default_rng(config.seed)
    probe = data.probe()
    history = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        train_loss = trainer.train_epoch(data, config.batch_size, rng, epoch, callbacks)
        test_loss, accuracy = trainer.evaluate(data.test_x, data.test_y,
                                               config.data.eval_batch_size)
        elapsed = time.perf_counter() - start
        grads = trainer.gradients(*probe)
        cosine, ratio = grad_relation(grads["has_aux"], grads["no_aux"])
        result = EpochResult(epoch, train_loss, test_loss, accuracy, cosine, ratio, elapsed)
        history.append(result)
        for hook in callbacks.on_epoch_end:
            hook(result)
    return history
