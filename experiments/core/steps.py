"""The compiled steps: the seed's train step, k of them per call, evaluation, gradients.

The step keeps the tutorial's shape: `forward_fn(data, label) -> (loss, logits)`,
`grad_fn = value_and_grad(forward_fn, None, optimizer.parameters, has_aux=...)` and
`optimizer(grads)`, inside an `nn.Cell` under GRAPH_MODE. That is the fastest correct way
on CPU: the benchmark's section 1 measures it against the tutorial's PyNative step and
default `@jit` (whose executor busy-waits a core away); `capture_mode="trace"` is not
used because it stops updating the weights.
"""

from __future__ import annotations

from collections.abc import Callable

import mindspore
from mindspore import nn, ops


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

    On CPU each call pays a launch cost whatever the batch; k steps per call pay it once.
    The batches come as 2k separate arguments (x0, y0, x1, y1, ...) rather than one
    stacked tensor, because slicing a stacked input inside the graph costs more than a
    step's matmuls (the benchmark's section 7 measures both). Updates happen in the same
    order on the same batches, so the results equal k single steps bit for bit (tested).
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

    def __init__(self, model: nn.Cell, loss_fn: Callable | None = None) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        # A task's own loss is a mean over the batch, as the seed's is: times the batch
        # size, it sums. The seed's cross-entropy sums exactly, as it always has.
        self.mean_loss = loss_fn is not None
        self.loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss(reduction="sum")

    def construct(self, data, label):
        logits = self.model(data)
        predicted = logits.argmax(1).astype(mindspore.int32)
        correct = (predicted == label).astype(mindspore.float32).sum()
        loss = self.loss_fn(logits, label)
        if self.mean_loss:
            loss = loss * label.shape[0]
        return loss, correct, predicted


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


def make_optimizer(name: str, params: list, momentum: float, weight_decay: float
                   ) -> nn.Optimizer:
    """The optimizer a config names. Its learning rate is set per run (Trainer.reset); with
    momentum and weight decay 0, `sgd` is the seed's `nn.SGD(params, 1e-2)` to the bit."""
    if name == "adam":
        return nn.Adam(params, learning_rate=1e-2, weight_decay=weight_decay)
    if name == "momentum":
        return nn.Momentum(params, learning_rate=1e-2, momentum=momentum,
                           weight_decay=weight_decay)
    return nn.SGD(params, learning_rate=1e-2, momentum=momentum, weight_decay=weight_decay)


def use_graph_mode() -> None:
    """Graph mode on this process's device (CPU unless `devices.use` chose another)."""
    from experiments.core import devices

    devices.use(*devices.current())
