"""Pictures logged with every run: learning curves, confusion matrix, test digits.

They are drawn with Pillow, which costs a fraction of what Matplotlib did; Matplotlib's
figures were most of what tracking added to a short trial (benchmark section 3 measures
tracking's cost). Optuna's plots of a sweep are the search layer's (search/parent.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def learning_curves(history: Sequence[Any], title: str) -> Any:
    """Train/test loss and test accuracy per epoch, two panels in one PIL image."""
    from PIL import Image, ImageDraw

    epochs = [r.epoch for r in history]
    losses = {"train loss": [r.train_loss for r in history],
              "test loss": [r.test_loss for r in history]}
    finite = [v for series in losses.values() for v in series if np.isfinite(v)] or [0.0, 1.0]
    image = Image.new("RGB", (900, 360), "white")
    draw = ImageDraw.Draw(image)
    draw.text((450, 16), title, font=_font(15), anchor="mm", fill="black")
    loss_range = (min(0.0, min(finite)), max(finite) * 1.05 or 1.0)
    _panel(draw, (60, 40, 420, 310), epochs, losses, loss_range, "loss (mean per sample)")
    # Accuracy climbs to the top right, so its legend goes to the bottom.
    _panel(draw, (510, 40, 870, 310), epochs,
           {"test accuracy": [r.test_accuracy for r in history]}, (0.0, 1.0), "test accuracy",
           legend_y=280)
    return image


_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c")  # Matplotlib's first three


def _panel(draw: Any, box: tuple[int, int, int, int], epochs: list[int],
           series: dict[str, list[float]], y_range: tuple[float, float], y_label: str,
           legend_y: int = 50) -> None:
    """Line plot with epoch ticks, five y ticks, a light grid and a legend."""
    x0, y0, x1, y1 = box
    lo, hi = y_range
    first, last = epochs[0], max(epochs[-1], epochs[0] + 1)
    font = _font(12)

    def at(epoch: float, value: float) -> tuple[float, float]:
        return (x0 + (epoch - first) / (last - first) * (x1 - x0),
                y1 - (value - lo) / ((hi - lo) or 1.0) * (y1 - y0))

    for i in range(5):
        value = lo + (hi - lo) * i / 4
        _, y = at(first, value)
        draw.line([(x0, y), (x1, y)], fill="#e6e6e6")
        draw.text((x0 - 6, y), f"{value:.3g}", font=font, anchor="rm", fill="black")
    for epoch in epochs:
        x, _ = at(epoch, lo)
        draw.line([(x, y0), (x, y1)], fill="#e6e6e6")
        draw.text((x, y1 + 6), str(epoch), font=font, anchor="mt", fill="black")
    draw.rectangle(box, outline="black")
    draw.text(((x0 + x1) / 2, y1 + 26), "epoch", font=font, anchor="mt", fill="black")
    draw.text((x0, y0 - 8), y_label, font=font, anchor="ld", fill="black")
    for k, (name, values) in enumerate(series.items()):
        colour = _COLOURS[k % len(_COLOURS)]
        points = [at(e, v) for e, v in zip(epochs, values, strict=True) if np.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((x1 - 8, legend_y + 16 * k), name, font=font, anchor="rm", fill=colour)


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


MAX_DRAWN = 100  # classes a confusion matrix is drawn for


def confusion(true: np.ndarray, predicted: np.ndarray) -> Any:
    """Counts of (true, predicted) class pairs on the test set, as a PIL image: ten digits,
    or as many classes as a task's own labels have (cells shrink past ten)."""
    from PIL import Image, ImageDraw

    k = max(10, int(max(true.max(), predicted.max())) + 1)
    if k > MAX_DRAWN:
        return None  # a cell per pair of classes: past a hundred classes, nothing to read
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    cell, left, top = max(12, 440 // k), 60, 56
    image = Image.new("RGB", (left + k * cell + 20, top + k * cell + 44), "white")
    draw = ImageDraw.Draw(image)
    small, large = _font(13), _font(15)
    light, dark = np.array([247, 251, 255]), np.array([8, 48, 107])  # Matplotlib's Blues
    peak = max(1, counts.max())
    for (i, j), n in np.ndenumerate(counts):
        x, y = left + j * cell, top + i * cell
        colour = tuple(int(c) for c in light + (dark - light) * n / peak)
        draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
        if n:
            draw.text((x + cell / 2, y + cell / 2), str(n), font=small, anchor="mm",
                      fill="white" if n > peak / 2 else "black")
    for c in range(k):
        draw.text((left + c * cell + cell / 2, top + k * cell + 4), str(c), font=small,
                  anchor="mt", fill="black")
        draw.text((left - 8, top + c * cell + cell / 2), str(c), font=small, anchor="rm",
                  fill="black")
    draw.text((left + k * cell / 2, top + k * cell + 24), "predicted", font=small,
              anchor="mt", fill="black")
    draw.text((8, top + k * cell / 2), "true", font=small, anchor="lm", fill="black")
    accuracy = np.trace(counts) / max(1, counts.sum())
    draw.text((image.width / 2, 20), f"confusion matrix ({counts.sum()} test digits, "
              f"accuracy {accuracy:.3f})", font=large, anchor="mm", fill="black")
    return image


def digit_grid(images: np.ndarray, true: np.ndarray, predicted: np.ndarray, n: int = 24,
               scale: int = 3) -> Any:
    """Test digits spread over the set, labelled predicted/true, wrong ones in red.

    `images` are the raw uint8 digits; they are shown through the training normalisation
    and back (MNIST's mean and std), which must give the digits unchanged.
    """
    from PIL import Image, ImageDraw

    from experiments.core.data import denormalize, normalize

    cols, label = 8, 18
    width, height = 28 * scale + 16, 28 * scale + label + 8
    idx = np.linspace(0, len(images) - 1, min(n, len(images))).astype(int)
    shown = denormalize(normalize(images[idx]))[:, 0]
    pixels = (np.clip(shown, 0, 1) * 255).round().astype(np.uint8)
    rows = -(-len(idx) // cols)
    sheet = Image.new("RGB", (cols * width, rows * height), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    for i, (k, digit) in enumerate(zip(idx, pixels, strict=True)):
        r, c = divmod(i, cols)
        x, y = c * width, r * height
        tile = Image.fromarray(255 - digit).resize((28 * scale, 28 * scale), Image.NEAREST)
        sheet.paste(tile, (x + 8, y + label))
        draw.text((x + width / 2, y + label / 2), f"pred {predicted[k]} / true {true[k]}",
                  font=font, anchor="mm", fill="black" if true[k] == predicted[k] else "red")
    return sheet
