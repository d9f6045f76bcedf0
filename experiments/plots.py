"""Figures logged as run artifacts. Matplotlib runs headless (Agg) and is imported late."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: Sequence[Any], title: str) -> Any:
    """Train/test loss and test accuracy per epoch, one figure."""
    plt = _pyplot()
    epochs = [r.epoch for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [r.train_loss for r in history], "o-", label="train loss")
    left.plot(epochs, [r.test_loss for r in history], "s-", label="test loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss (mean per sample)")
    left.legend()
    right.plot(epochs, [r.test_accuracy for r in history], "o-", color="tab:green")
    right.set_xlabel("epoch")
    right.set_ylabel("test accuracy")
    right.set_ylim(0, 1)
    for ax in (left, right):
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def optuna_figures(study: Any) -> list[tuple[str, Any]]:
    """Optuna's own plots that the study can draw so far (importances need 2+ trials)."""
    import warnings

    from optuna.visualization import matplotlib as ovm

    plt = _pyplot()
    makers = {"optimization_history": ovm.plot_optimization_history,
              "param_importances": ovm.plot_param_importances,
              "parallel_coordinate": ovm.plot_parallel_coordinate,
              "slice": ovm.plot_slice}
    out = []
    for name, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = make(study)
            except Exception:  # a plot the study cannot support yet (too few trials) is skipped
                plt.close("all")
                continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        figure = first.figure
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        out.append((name, figure))
    return out


def confusion(true: np.ndarray, predicted: np.ndarray) -> Any:
    """Counts of (true, predicted) digit pairs on the test set."""
    plt = _pyplot()
    counts = np.zeros((10, 10), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    fig, ax = plt.subplots(figsize=(6, 5.4))
    image = ax.imshow(counts, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                    color="white" if n > counts.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    accuracy = np.trace(counts) / max(1, counts.sum())
    ax.set_title(f"confusion matrix ({counts.sum()} test digits, accuracy {accuracy:.3f})")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def digit_grid(images: np.ndarray, true: np.ndarray, predicted: np.ndarray, n: int = 24) -> Any:
    """Test digits spread over the set, labelled predicted/true, wrong ones in red.

    `images` are the raw uint8 digits; they are shown through the training normalisation
    and back (MNIST's mean and std), which must give the digits unchanged. One image with
    text on top draws in a tenth of the time of one subplot per digit.
    """
    from experiments.data import denormalize, normalize

    plt = _pyplot()
    cols, pad = 8, 12
    idx = np.linspace(0, len(images) - 1, min(n, len(images))).astype(int)
    shown = denormalize(normalize(images[idx]))[:, 0]
    rows = -(-len(idx) // cols)
    sheet = np.ones((rows * (28 + pad), cols * (28 + 4)))
    for i, image in enumerate(shown):
        r, c = divmod(i, cols)
        sheet[r * (28 + pad) + pad : (r + 1) * (28 + pad), c * 32 + 2 : c * 32 + 30] = image
    fig, ax = plt.subplots(figsize=(cols * 1.3, rows * 1.6))
    ax.imshow(sheet, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for i, k in enumerate(idx):
        r, c = divmod(i, cols)
        ok = true[k] == predicted[k]
        ax.text(c * 32 + 16, r * (28 + pad) + pad - 2, f"pred {predicted[k]} / true {true[k]}",
                ha="center", va="bottom", fontsize=8, color="black" if ok else "red",
                backgroundcolor="white")
    ax.axis("off")
    fig.tight_layout()
    return fig
