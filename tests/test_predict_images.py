"""`load_image` reads image files as people make them: transparent canvases, phone photos,
16-bit scans, off-centre digits. Every file is real, written by Pillow to `tmp_path`."""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.mark.parametrize("size", [(20_000, 20_000), (10_000, 10_000)])
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, size):
    # 20000x20000 (400 M pixels) is over twice Pillow's limit, where Pillow raises its
    # own error; 10000x10000 is between the limit and twice it, where Pillow only warns
    # and would decode 100 MB of pixels. Both are a few kB of PNG on disk.
    path = tmp_path / "bomb.png"
    Image.new("1", size).save(path)
    assert path.stat().st_size < 100_000
    with pytest.raises(PredictError, match=r"bomb\.png: more than \d+ pixels, refused as a "
                                           r"possible decompression bomb"):
        load_image(path)


def test_unreadable_files_are_refused_in_words(digits, tmp_path):
    whole = _save(digits[0], tmp_path / "whole.png")
    data = Path(whole).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(PredictError, match=r"cut\.png: not a readable image \(.*truncated"):
        load_image(tmp_path / "cut.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(PredictError, match=r"empty\.png: not a readable image"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(PredictError, match=r": not a regular file"):
        load_image(tmp_path)
    os.mkfifo(tmp_path / "pipe.png")  # opening it would wait for a writer forever
    with pytest.raises(PredictError, match=r"pipe\.png: not a regular file"):
        load_image(tmp_path / "pipe.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(PredictError, match=r"loop\.png: not a readable image \(.*symbolic"):
        load_image(tmp_path / "loop.png")


def test_a_cut_exif_block_reads_without_a_warning(digits, tmp_path):
    import warnings

    image = Image.fromarray(255 - digits[4]).convert("RGB")
    exif = Image.Exif()
    exif[ORIENTATION] = 1
    exif[0x010E] = "a description long enough to be cut"
    image.save(tmp_path / "cut_exif.jpg", exif=exif.tobytes()[:-10])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that reaches the caller fails here
        digit = load_image(tmp_path / "cut_exif.jpg")
    assert digit.shape == (28, 28) and digit.max() > 200


@pytest.mark.parametrize("paper", [0, 255, 128])
def test_a_blank_image_is_blank(tmp_path, paper):
    from experiments.core.digits import is_blank

    assert is_blank(load_image(_save(np.full((300, 200), paper, np.uint8),
                                     tmp_path / "blank.png")))


def test_a_faint_digit_is_not_blank(digits, tmp_path):
    from experiments.core.digits import is_blank

    faint = (digits[1] // 4).astype(np.uint8)  # strokes near 63: pale pencil
    assert not is_blank(load_image(_save(faint, tmp_path / "faint.png")))


def test_plain_inputs_still_work(digits, tmp_path):
    digit = digits[0]
    np.testing.assert_array_equal(load_image(_save(digit, tmp_path / "d.png")), digit)
    np.testing.assert_array_equal(load_image(_save(255 - digit, tmp_path / "i.png")), digit)
    with pytest.raises(PredictError, match=r"missing\.png: no such file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(PredictError, match=r"notes\.txt: not a readable image"):
        load_image(tmp_path / "notes.txt")


@pytest.mark.parametrize("make, message", [
    (lambda p: Image.new("1", (20_000, 20_000)).save(p), "refused as a possible decompression"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "not a readable image"),
    (lambda p: p.write_text("a note, not a picture"), "not a readable image"),
])
def test_predict_cli_refuses_unreadable_images_in_one_line(tmp_path, make, message):
    from helpers import run_cli

    make(tmp_path / "digit.png")
    result = run_cli("predict", "--model", "best:sweep.yaml", "digit.png", cwd=tmp_path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: digit.png: "), lines
    assert message in lines[0], lines
    assert "Traceback" not in result.stderr and not (tmp_path / "mlruns").exists()
