"""Figures logged as run artifacts. Matplotlib runs headless (Agg) and is imported late."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
            except Exception:
                plt.close("all")
                continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        figure = first.figure
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        out.append((name, figure))
    return out
