"""`load_image` reads image files as people make them: transparent canvases, phone photos,
16-bit scans, off-centre digits. Every file is real, written by Pillow to `tmp_path`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from experiments.core.digits import PredictError, load_image

ORIENTATION = 0x0112  # the EXIF tag phones set instead of rotating the stored pixels


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from experiments.core.data import load_offline_sample

    return load_offline_sample().test_images


def _save(array: np.ndarray, path, mode: str | None = None, **params) -> str:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
    image.save(path, **params)
    return str(path)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_black_ink_on_transparent_canvas_is_read(digits, tmp_path, mode):
    # As drawing apps export: black ink whose alpha is the stroke, the rest fully
    # transparent and stored black, so dropping alpha leaves a blank black image.
    digit = digits[3]
    ink = np.zeros_like(digit)
    layers = [ink, ink, ink, digit] if mode == "RGBA" else [ink, digit]
    path = _save(np.dstack(layers), tmp_path / "canvas.png", mode)
    assert Image.open(path).mode == mode
    np.testing.assert_array_equal(load_image(path), digit)


def test_white_ink_on_transparent_canvas_is_read(digits, tmp_path):
    # White ink must not vanish into a white background: light ink goes onto black.
    digit = digits[5]
    white = np.where(digit > 0, 255, 0).astype(np.uint8)
    path = _save(np.dstack([white, white, white, digit]), tmp_path / "white.png", "RGBA")
    np.testing.assert_array_equal(load_image(path), digit)


@pytest.mark.parametrize("suffix", ["png", "gif"])
def test_palette_image_with_transparent_entry_is_read(digits, tmp_path, suffix):
    # Index 0 is transparent and, as usual, black; index 1 is the black ink.
    ink = (digits[7] > 127).astype(np.uint8)
    image = Image.fromarray(ink, "P")
    image.putpalette([0, 0, 0] * 256)
    path = tmp_path / f"palette.{suffix}"
    image.save(path, transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    np.testing.assert_array_equal(load_image(path), ink * 255)


def test_exif_orientation_is_applied(digits, tmp_path):
    # A phone photo of dark ink on paper, stored rotated 90 degrees counter-clockwise
    # with Orientation 6 ("rotate 90 clockwise to view"), as cameras write it.
    photo = Image.fromarray(255 - digits[2]).resize((112, 112), Image.BILINEAR).convert("RGB")
    stored = Image.fromarray(np.rot90(np.asarray(photo), 1))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    jpeg = tmp_path / "phone.jpg"
    stored.save(jpeg, quality=95, exif=exif)
    assert Image.open(jpeg).getexif()[ORIENTATION] == 6
    # The upright picture from the very pixels the JPEG decodes to, saved losslessly.
    decoded = np.asarray(Image.open(jpeg).convert("L"))
    upright = _save(np.ascontiguousarray(np.rot90(decoded, -1)), tmp_path / "upright.png")
    sideways = _save(decoded, tmp_path / "sideways.png")
    np.testing.assert_array_equal(load_image(jpeg), load_image(upright))
    assert not np.array_equal(load_image(jpeg), load_image(sideways))


@pytest.mark.parametrize("kind", ["png16", "tiff32", "float"])
def test_wide_grayscale_is_scaled_not_clipped(digits, tmp_path, kind):
    # 16-bit samples v * 257 divide back to v exactly, so the digit must come back exact;
    # float images are assumed to hold 0.0-1.0, where v / 255 scales back to v.
    digit = digits[9]
    wide = {"png16": (digit.astype(np.uint16) * 257, "png", "I;16"),
            "tiff32": (digit.astype(np.int32) * 257, "tiff", "I"),
            "float": (digit.astype(np.float32) / 255, "tiff", "F")}
    array, suffix, mode = wide[kind]
    path = _save(array, tmp_path / f"wide.{suffix}")
    assert Image.open(path).mode == mode
    np.testing.assert_array_equal(load_image(path), digit)


def test_off_centre_digit_is_shifted_without_wrapping(tmp_path):
    # A heavy bar on a long thin stem: its mass sits high, so centring moves the digit
    # down far enough that the stem runs off the bottom. It must not reappear at the top.
    canvas = np.zeros((40, 40), np.uint8)
    canvas[:12] = 255
    canvas[12:, 19:21] = 255
    small = np.asarray(Image.fromarray(canvas).resize((20, 20), Image.LANCZOS), np.float64)
    placed = np.zeros((28, 28))
    placed[4:24, 4:24] = small
    rows = placed.sum(axis=1)
    shift = round(13.5 - (rows * np.arange(28)).sum() / rows.sum())
    assert placed[28 - shift :].max() > 0  # a roll would wrap these rows to the top
    expected = np.zeros((28, 28))
    expected[shift:] = placed[: 28 - shift]  # the column centre is already 13.5
    out = load_image(_save(canvas, tmp_path / "bar.png"))
    assert out[:shift].max() == 0
    np.testing.assert_array_equal(out, np.clip(expected, 0, 255).astype(np.uint8))


def test_decompression_bomb_is_a_predict_error(tmp_path, monkeypatch):
    path = _save(np.zeros((100, 100), np.uint8), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # 10,000 pixels is over twice it
    with pytest.raises(PredictError, match=r"bomb\.png: .*DecompressionBombError"):
        load_image(path)


def test_plain_inputs_still_work(digits, tmp_path):
    digit = digits[0]
    np.testing.assert_array_equal(load_image(_save(digit, tmp_path / "d.png")), digit)
    np.testing.assert_array_equal(load_image(_save(255 - digit, tmp_path / "i.png")), digit)
    with pytest.raises(PredictError, match=r"missing\.png: no such file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(PredictError, match=r"notes\.txt: not a readable image"):
        load_image(tmp_path / "notes.txt")
