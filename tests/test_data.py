
import numpy as np
import pytest

from experiments.core import data


def test_offline_sample_is_stratified_and_deterministic(mnist):
    assert mnist.train_images.shape == (4000, 28, 28) and mnist.test_images.shape == (1000, 28, 28)
    assert np.bincount(mnist.train_labels).tolist() == [400] * 10
    assert np.bincount(mnist.test_labels).tolist() == [100] * 10
    assert data.load_offline_sample().digest == mnist.digest


def write_folder(root, mnist):
    for split, (images, labels, _) in data.SPLITS.items():
        (root / split).mkdir(parents=True)
        x = mnist.train_images if split == "train" else mnist.test_images
        y = mnist.train_labels if split == "train" else mnist.test_labels
        data.write_idx(root / split / images, x)
        data.write_idx(root / split / labels, y)


def test_fast_transforms_equal_the_seed_pipeline(tmp_path, mnist):
    """The in-memory path gives the same tensors as the seed's MnistDataset map pipeline."""
    write_folder(tmp_path / "MNIST_Data", mnist)
    loaded = data.load_folder(tmp_path / "MNIST_Data")
    assert loaded.digest == mnist.digest
    pipe = data.seed_datapipe(str(tmp_path / "MNIST_Data" / "test"), batch_size=1000)
    images, labels = next(pipe.create_tuple_iterator(output_numpy=True))
    assert labels.dtype == np.int32 and images.shape == (1000, 1, 28, 28)
    np.testing.assert_allclose(data.normalize(mnist.test_images), images, rtol=0, atol=1e-6)
    assert (labels == mnist.test_labels).all()


def test_corrupt_idx_is_named(tmp_path, mnist):
    write_folder(tmp_path / "MNIST_Data", mnist)
    bad = tmp_path / "MNIST_Data" / "test" / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte.*truncated"):
        data.load_folder(tmp_path / "MNIST_Data")
    bad.write_bytes(b"\x00\x00\x08\x01" + bytes(20))
    with pytest.raises(data.DataError, match="magic number 2051"):
        data.load_folder(tmp_path / "MNIST_Data")


def test_failed_download_leaves_nothing_and_falls_back(tmp_path):
    warnings = []
    dest = tmp_path / "MNIST_Data"
    # Port 9 on loopback refuses at once: a real failed download, no network needed.
    with pytest.raises(data.DataError, match=r"download of http://127\.0\.0\.1:9"):
        data.download_mnist(dest, url="http://127.0.0.1:9/MNIST_Data.zip")
    assert list(tmp_path.iterdir()) == []
    mnist = data.resolve(str(dest), download=False, warn=warnings.append)
    assert mnist.name == "mnist-5k-offline" and "data.download=false" in mnist.fallback_reason
    assert not dest.exists()


def test_normalize_uses_mnist_statistics():
    x = np.array([[[0, 255]]], dtype=np.uint8)
    back = data.denormalize(data.normalize(x))
    np.testing.assert_allclose(back[0, 0], [[0.0, 1.0]], atol=1e-6)


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server on loopback serving a folder: downloads without the internet."""
    import functools
    import http.server
    import threading

    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def mnist_zip(path, train_count=60_000, test_count=10_000, truncate_file=None):
    """A zip laid out like the seed's MNIST_Data.zip (blank digits compress to little)."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for split, (images, labels, _) in data.SPLITS.items():
            n = train_count if split == "train" else test_count
            for name, array in ((images, np.zeros((n, 28, 28), np.uint8)),
                                (labels, np.arange(n, dtype=np.uint8) % 10)):
                buffer = io.BytesIO()
                tmp = path.parent / "tmp.idx"
                data.write_idx(tmp, array)
                raw = tmp.read_bytes()
                if name == truncate_file:
                    raw = raw[: len(raw) // 2]
                buffer.write(raw)
                zf.writestr(f"MNIST_Data/{split}/{name}", buffer.getvalue())
                tmp.unlink()


def test_download_verifies_and_moves_into_place(tmp_path, http_folder):
    root, url = http_folder
    mnist_zip(root / "MNIST_Data.zip")
    dest = tmp_path / "work" / "MNIST_Data"
    data.download_mnist(dest, url=f"{url}/MNIST_Data.zip")
    loaded = data.load_folder(dest, full=True)
    assert len(loaded.train_labels) == 60_000 and len(loaded.test_labels) == 10_000
    assert [p.name for p in dest.parent.iterdir()] == ["MNIST_Data"]


@pytest.mark.parametrize("damage", ["truncated zip", "truncated idx", "wrong count"])
def test_bad_download_leaves_nothing_and_falls_back(tmp_path, http_folder, damage):
    root, url = http_folder
    archive = root / "MNIST_Data.zip"
    if damage == "truncated zip":
        mnist_zip(archive)
        archive.write_bytes(archive.read_bytes()[:-2000])
    elif damage == "truncated idx":
        mnist_zip(archive, truncate_file="t10k-images-idx3-ubyte")
    else:
        mnist_zip(archive, train_count=59_000)
    work = tmp_path / "work"
    work.mkdir()
    warnings = []
    mnist = data.resolve(str(work / "MNIST_Data"), True, warnings.append,
                         url=f"{url}/MNIST_Data.zip")
    assert mnist.name == "mnist-5k-offline"
    assert len(warnings) == 1 and "offline sample" in warnings[0]
    if damage != "truncated zip":
        named = "t10k-images-idx3-ubyte" if damage == "truncated idx" else "train-images"
        assert named in warnings[0] and named in mnist.fallback_reason
    assert list(work.iterdir()) == [], "a half-written MNIST_Data/ was left behind"


def test_normalisation_is_mnists_own():
    """The seed de-normalises with CIFAR's statistics: pin MNIST's and a known pixel."""
    assert (data.MEAN, data.STD) == (0.1307, 0.3081)
    x = np.array([[[0, 255, 128]]], dtype=np.uint8)
    got = data.normalize(x)[0, 0, 0]
    np.testing.assert_allclose(got, [(0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081,
                                     (128 / 255 - 0.1307) / 0.3081], rtol=1e-6)
    assert got.dtype == np.float32


def test_offline_fallback_leaves_no_empty_folders(tmp_path):
    warnings = []
    dest = tmp_path / "a" / "b" / "MNIST_Data"
    mnist = data.resolve(str(dest), True, warnings.append, url="http://127.0.0.1:9/x.zip")
    assert mnist.name == "mnist-5k-offline" and len(warnings) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("where", ["/proc/x/MNIST_Data", "file/MNIST_Data"])
def test_a_data_path_that_cannot_be_made_is_exit_2(tmp_path, where):
    import runner
    from helpers import run_cli

    (tmp_path / "file").write_text("not a folder")
    result = run_cli("train", "--set", f"data.path={where}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.path" in lines[0] and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert runner.EXIT_BAD_INPUT == 2


def test_an_existing_folder_never_touches_the_network(tmp_path, mnist, http_folder):
    """With the folder in place, a real server behind the download URL sees no request."""
    root, _ = http_folder
    mnist_zip(root / "MNIST_Data.zip", train_count=10, test_count=10)
    write_folder(tmp_path / "MNIST_Data", mnist)
    seen = []
    handler = http_folder_handler(root, seen)
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    counting = f"http://127.0.0.1:{server.server_address[1]}/MNIST_Data.zip"
    try:
        loaded = data.resolve(str(tmp_path / "MNIST_Data"), True, lambda m: None, url=counting)
        assert loaded.digest == mnist.digest and loaded.fallback_reason == ""
        assert seen == []
        # The same server does answer a download, so the silence above means something.
        with pytest.raises(data.DataError, match="full MNIST has 60000"):
            data.download_mnist(tmp_path / "other" / "MNIST_Data", url=counting)
        assert seen and set(seen) == {"/MNIST_Data.zip"}
    finally:
        server.shutdown()


def http_folder_handler(root, seen):
    import functools
    import http.server

    class Counting(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    return functools.partial(Counting, directory=str(root))


def test_every_source_gets_a_data_line_and_a_failed_download_one_short_warning(tmp_path):
    """The fallback warning was a ~330-character line on every command, and a
    tutorial-layout MNIST_Data/ trained with no `data:` line at all."""
    said = []
    mnist = data.load(str(tmp_path / "MNIST_Data"), True, said.append,
                      url="http://127.0.0.1:9/MNIST_Data.zip")
    warning, line = said
    assert warning.startswith("WARNING: MNIST download failed (") and len(warning) < 160
    assert "using the offline sample" in warning and "127.0.0.1:9" in mnist.fallback_reason
    assert line.startswith("data: offline sample ") and "4000 train / 1000 test" in line

    said.clear()
    folder = tmp_path / "tutorial"
    mnist_zip(tmp_path / "MNIST_Data.zip", train_count=100, test_count=20)
    import zipfile

    zipfile.ZipFile(tmp_path / "MNIST_Data.zip").extractall(folder)
    data.load(str(folder / "MNIST_Data"), False, said.append)
    assert len(said) == 1 and said[0].startswith("data: ") and "100 train / 20 test" in said[0]
    assert str(folder / "MNIST_Data") in said[0]
