"""The seed's functional-autodiff example on `w`, `b`, with its claims checked.

The seed differentiates `z = x @ w + b`, `loss = BCE-with-logits(z, y)` four ways and
states: a function returning (loss, z) differentiated as is gives grad(loss) + grad(sum z);
`stop_gradient(z)` and `has_aux=True` both give grad(loss) alone.

Below it, the gradient diagnostics the training loop logs every epoch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-6


@dataclass(frozen=True)
class Check:
    name: str
    max_error: float

    @property
    def ok(self) -> bool:
        return self.max_error <= TOLERANCE


def gradients(seed: int = 0) -> tuple[dict[str, list[np.ndarray]], np.ndarray]:
    """The four gradients (w, b) of the seed's example, and the input x."""
    import mindspore
    from mindspore import Parameter, Tensor, ops

    rng = np.random.default_rng(seed)
    x = ops.ones(5, mindspore.float32)
    y = ops.zeros(3, mindspore.float32)
    w = Parameter(Tensor(rng.standard_normal((5, 3)), mindspore.float32), name="w")
    b = Parameter(Tensor(rng.standard_normal(3), mindspore.float32), name="b")

    def function(x, y, w, b):
        z = ops.matmul(x, w) + b
        return ops.binary_cross_entropy_with_logits(z, y, ops.ones_like(z), ops.ones_like(z))

    def function_with_logits(x, y, w, b):
        z = ops.matmul(x, w) + b
        loss = ops.binary_cross_entropy_with_logits(z, y, ops.ones_like(z), ops.ones_like(z))
        return loss, z

    def function_stop_gradient(x, y, w, b):
        z = ops.matmul(x, w) + b
        loss = ops.binary_cross_entropy_with_logits(z, y, ops.ones_like(z), ops.ones_like(z))
        return loss, ops.stop_gradient(z)

    def run(fn, **kwargs) -> list[np.ndarray]:
        grads = mindspore.grad(fn, (2, 3), **kwargs)(x, y, w, b)
        if kwargs.get("has_aux"):
            grads = grads[0]
        return [g.asnumpy() for g in grads]

    grads = {
        "loss only": run(function),
        "no_aux": run(function_with_logits),
        "stop_gradient": run(function_stop_gradient),
        "has_aux": run(function_with_logits, has_aux=True),
    }
    return grads, x.asnumpy()


def checks(grads: dict[str, list[np.ndarray]], x: np.ndarray) -> list[Check]:
    """The seed's relations, each as its largest absolute error."""
    def diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
        return max(float(np.max(np.abs(p - q))) for p, q in zip(a, b, strict=True))

    # d(sum z)/dw[i, j] = x[i] and d(sum z)/db[j] = 1.
    sum_z = [np.outer(x, np.ones(3, np.float32)), np.ones(3, np.float32)]
    extra = [p - q for p, q in zip(grads["no_aux"], grads["loss only"], strict=True)]
    return [
        Check("has_aux == loss only", diff(grads["has_aux"], grads["loss only"])),
        Check("stop_gradient == loss only", diff(grads["stop_gradient"], grads["loss only"])),
        Check("no_aux - loss only == d(sum z)/d(w, b)", diff(extra, sum_z)),
    ]


def report(grads: dict[str, list[np.ndarray]], results: list[Check]) -> str:
    """The four gradients side by side, then the checks."""
    names = list(grads)
    lines = ["param  index   " + "".join(f"{n:>15}" for n in names)]
    for p, pname in enumerate(("w", "b")):
        for index in np.ndindex(grads[names[0]][p].shape):
            cells = "".join(f"{grads[n][p][index]:>15.6f}" for n in names)
            lines.append(f"{pname:<6} {index!s:<8}{cells}")
    lines.append("")
    for check in results:
        verdict = "ok  " if check.ok else "FAIL"
        lines.append(f"{verdict} {check.name}  (max |error| {check.max_error:.2e})")
    return "\n".join(lines)


def run(seed: int = 0) -> tuple[str, bool]:
    """`runner.py autodiff`: the gradients side by side and the checks; and whether all hold."""
    grads, x = gradients(seed)
    results = checks(grads, x)
    return report(grads, results), all(c.ok for c in results)


# --- diagnostics the training loop logs every epoch ------------------------------------


def weights_digest(weights: list[np.ndarray]) -> str:
    """A short content hash of the weights: paired runs must start from the same one."""
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def grad_relation(aux: list[np.ndarray], no_aux: list[np.ndarray]) -> tuple[float, float]:
    """(cosine, norm ratio no_aux/has_aux) of the two flattened gradients."""
    a = np.concatenate([g.ravel() for g in aux]).astype(np.float64)
    b = np.concatenate([g.ravel() for g in no_aux]).astype(np.float64)
    # NumPy's own pairwise sums, not BLAS: OpenBLAS adds in an order that depends on its
    # thread count, which changed these two metrics in their last bits between a process
    # on one core and one on two (found by `runner.py replay`).
    na, nb = math.sqrt(np.sum(a * a)), math.sqrt(np.sum(b * b))
    if not (na > 0 and nb > 0 and math.isfinite(na) and math.isfinite(nb)):
        return math.nan, math.nan
    return float(np.sum(a * b) / (na * nb)), float(nb / na)
