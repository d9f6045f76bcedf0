"""Digits as people make them, read as MNIST's: the pre-processing of the custom predict.

Users have raw digits: 28x28 uint8 arrays, or image files of any size and mode (phone
photos, scans, drawings on a transparent canvas, 16-bit PNGs). Here they become MNIST-style
28x28 uint8 digits, light on dark and centred by mass; the model then applies exactly the
training transforms (`experiments/tracking/pyfunc_model.py`).
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from experiments.core.config import UserError

INK = 30  # grey levels above this are ink (MNIST's strokes are near 255, its paper 0)


class PredictError(UserError):
    """Input that cannot be predicted; the message names it."""


def load_image(path: str | Path) -> np.ndarray:
    """An image file as an MNIST-style 28x28 uint8 digit: light on dark, centred."""
    gray = read_pixels(path, gray=True)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 127:  # dark ink on light paper: MNIST is the other way round
        gray = 255 - gray
    if _contrast(gray) <= INK:  # one colour throughout (blank paper, a flat photo): no stroke
        return np.zeros((28, 28), np.uint8)
    if gray.shape == (28, 28):
        return gray
    return _fit_like_mnist(gray)


def read_pixels(path: str | Path, gray: bool = False) -> np.ndarray:
    """An image file's pixels, upright: uint8, (H, W) gray or (H, W, 3) colour as stored
    (a task's `to_input` gets these; `gray` makes every image (H, W))."""
    from PIL import Image, ImageOps

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device would block or
            raise PredictError(f"{path}: not a regular file")  # stream forever; folders too
        with warnings.catch_warnings():
            # Pillow's other warnings are about metadata (a cut EXIF block, odd TIFF tags,
            # an icon of another size than it says): the pixels read fine, and a warning
            # printed between the answers helps no one.
            warnings.simplefilter("ignore")
            # Pillow only warns between its limit and twice it (and then decodes gigabytes);
            # a digit never needs that many pixels, so that warning is an error here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                # Phones store pixels as the sensor saw them and tag how to turn them upright.
                img = ImageOps.exif_transpose(img)
                if gray or img.mode in ("1", "L", "LA", "I", "F") or \
                        img.mode.startswith("I;"):
                    return _as_gray(img)
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PredictError(f"{path}: more than {Image.MAX_IMAGE_PIXELS} pixels, refused as a "
                           "possible decompression bomb (a digit needs far fewer)") from None
    # Broken files surface from Pillow's decoders as any of these, not only OSError
    # (UnidentifiedImageError and "image file is truncated" are OSErrors).
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise PredictError(f"{path}: not a readable image ({_why(exc)})") from None


def _why(exc: BaseException) -> str:
    """Pillow's own words on one line, without the path it repeats."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text.split(" '")[0] if text.startswith("cannot identify image file") else text


# Modes whose samples are wider than 8 bits; `convert("L")` would clip them, not scale them.
_WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _as_gray(img: Any) -> np.ndarray:
    """Any mode as 8-bit grey, keeping what transparency and wide samples mean."""
    if img.mode in _WIDE_MODES:
        return _scale_wide(np.asarray(img), img.mode)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _flatten_alpha(img)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _scale_wide(samples: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit and float grey scaled onto 0-255 instead of clipped.

    Integer images are taken as 16-bit samples (0-65535), which is how Pillow opens 16-bit
    PNG and TIFF ("I;16", or "I" from older Pillow and other tools); larger values clip.
    Float images are taken as 0.0-1.0, the usual range of float scans and renders.
    """
    values = np.nan_to_num(samples.astype(np.float64))
    top = 1.0 if mode == "F" else 65535.0
    return np.rint(np.clip(values, 0, top) * (255 / top)).astype(np.uint8)


def _flatten_alpha(img: Any) -> np.ndarray:
    """Transparent pixels made background, so ink drawn on a transparent canvas shows.

    The colour stored under fully transparent pixels means nothing (usually black), so
    dropping alpha can make ink and canvas one colour. The opaque pixels are the ink; the
    canvas becomes whatever contrasts with them: white under dark ink, black under light
    ink (judged by the alpha-weighted mean brightness). The border test in `load_image`
    then turns dark-on-white into MNIST's light-on-dark as for any paper scan.
    """
    rgba = img.convert("LA").convert("RGBA") if img.mode == "La" else img.convert("RGBA")
    ink = np.asarray(rgba.convert("L"), dtype=np.float64)
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255
    opaque = alpha.sum()
    light_ink = opaque > 0 and (ink * alpha).sum() / opaque > 127
    canvas = 0.0 if light_ink else 255.0
    return np.rint(ink * alpha + canvas * (1 - alpha)).astype(np.uint8)


def _fit_like_mnist(gray: np.ndarray) -> np.ndarray:
    """As MNIST was made: the digit's box scaled into 20x20, centred by mass in 28x28."""
    from PIL import Image

    ys, xs = np.nonzero(gray > INK)
    if len(ys) == 0:
        return np.zeros((28, 28), np.uint8)
    crop = gray[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = 20.0 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = np.asarray(Image.fromarray(crop).resize(size, Image.LANCZOS), dtype=np.float64)
    out = np.zeros((28, 28))
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    total = out.sum()
    if total > 0:
        cy = (out.sum(axis=1) * np.arange(28)).sum() / total
        cx = (out.sum(axis=0) * np.arange(28)).sum() / total
        out = _shift(out, round(13.5 - cy), round(13.5 - cx))
    return np.clip(out, 0, 255).astype(np.uint8)


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The image moved by (dy, dx) with zero fill.

    Ink pushed off one edge is lost, as when MNIST was made; `np.roll` would wrap it onto
    the opposite edge and draw a stroke the digit does not have.
    """
    h, w = image.shape
    out = np.zeros_like(image)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = (
        image[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)])
    return out


def as_digits(data: Any) -> np.ndarray:
    """Accept (N, 28, 28) or (28, 28) arrays of 0-255, or a list of image paths."""
    if isinstance(data, str | Path) or (isinstance(data, list | tuple) and data
                                        and isinstance(data[0], str | Path)):
        paths = [data] if isinstance(data, str | Path) else data
        return np.stack([load_image(p) for p in paths])
    array = np.asarray(data)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (28, 28):
        raise PredictError(f"expected digits of shape (N, 28, 28), got {array.shape}")
    if not len(array):
        raise PredictError("expected at least one digit, got none (shape (0, 28, 28))")
    if not np.issubdtype(array.dtype, np.number) or np.isnan(array).any() or \
            array.min() < 0 or array.max() > 255:
        raise PredictError("expected pixel values from 0 to 255")
    if not np.array_equal(array, np.round(array)):
        raise PredictError("expected whole pixel values (uint8), got fractions")
    return array.astype(np.uint8)


def is_blank(digit: np.ndarray) -> bool:
    """Nothing drawn: no two pixels differ by more than a faint stroke does from paper
    (INK, the cut-off that finds the ink when an image is scaled into MNIST's box)."""
    return _contrast(digit) <= INK


def _contrast(gray: np.ndarray) -> int:
    return int(gray.max()) - int(gray.min()) if gray.size else 0
