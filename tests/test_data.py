import functools
import gzip
import http.server
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from jaxmnist import data
from jaxmnist.errors import DataError

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path, array, *, gz=False) -> None:
    content = idx_bytes(array)
    path.write_bytes(gzip.compress(content) if gz else content)


def tiny_dataset(folder, n_train=12, n_test=5, gz=True) -> None:
    """Four well-formed IDX files with random content (not MNIST, so checksums do not match)."""
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n), gz=gz)


# Real MNIST ------------------------------------------------------------------------------------

def test_real_mnist_counts_dtypes_and_statistics(mnist):
    assert mnist.train.images_NHW.shape == (60_000, 28, 28)
    assert mnist.test.images_NHW.shape == (10_000, 28, 28)
    assert mnist.train.images_NHW.dtype == np.uint8
    assert mnist.train.labels_N.dtype == np.int32 and mnist.train.labels_N.shape == (60_000,)
    assert set(np.unique(mnist.test.labels_N)) == set(range(10))
    pixels = mnist.train.images_NHW / 255.0
    assert pixels.mean() == pytest.approx(0.1307, abs=5e-5)
    assert pixels.std() == pytest.approx(0.3081, abs=5e-5)
    # The first training label of MNIST is a 5, the first test label a 7.
    assert mnist.train.labels_N[0] == 5 and mnist.test.labels_N[0] == 7


def test_parent_folder_with_dataset_subfolders_is_accepted(mnist_dir):
    assert data.local_files("mnist", mnist_dir.parent)["test_labels"].parent == mnist_dir


def test_environment_variable_names_the_folder(mnist_dir, monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(mnist_dir))
    assert data.load("mnist").source == str(mnist_dir)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "gone"))
    with pytest.raises(DataError, match="gone \\(from \\$JAXMNIST_DATA_DIR\\) does not exist"):
        data.load("mnist")


def test_fashion_files_passed_as_mnist_are_named(mnist_dir):
    fashion = mnist_dir.parent / "fashion-mnist"
    if not fashion.is_dir():
        pytest.skip(f"no Fashion-MNIST beside MNIST at {fashion}")
    with pytest.raises(DataError, match="is fashion_mnist, not mnist: pass --dataset fashion_mnist"):
        data.load("mnist", fashion)
    assert len(data.load("fashion_mnist", fashion).train) == 60_000


def test_uncompressed_real_files_load_identically(mnist_dir, mnist, tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        shutil.copy(mnist_dir / f"{name}.gz", tmp_path)
    loaded = data.load("mnist", tmp_path)
    np.testing.assert_array_equal(loaded.test.images_NHW, mnist.test.images_NHW)
    np.testing.assert_array_equal(loaded.test.labels_N, mnist.test.labels_N)


def test_train_val_split_is_deterministic_from_the_seed(mnist):
    train, val = data.split_train_val(mnist.train, 6_000, seed=0)
    again, val_again = data.split_train_val(mnist.train, 6_000, seed=0)
    _, val_other = data.split_train_val(mnist.train, 6_000, seed=1)
    assert (len(train), len(val)) == (54_000, 6_000)
    np.testing.assert_array_equal(val.images_NHW, val_again.images_NHW)
    np.testing.assert_array_equal(train.labels_N, again.labels_N)
    assert not np.array_equal(val.labels_N, val_other.labels_N)
    # Disjoint and complete: the two parts' pixel sums add up to the whole training set's.
    total = mnist.train.images_NHW.sum(dtype=np.int64)
    assert train.images_NHW.sum(dtype=np.int64) + val.images_NHW.sum(dtype=np.int64) == total
    assert data.split_train_val(mnist.train, 0, seed=0) == (mnist.train, None)


# Corrupt and wrong files --------------------------------------------------------------------

def test_tiny_fixture_loads_when_checksums_are_not_verified(tmp_path):
    tiny_dataset(tmp_path, gz=False)
    loaded = data.load("mnist", tmp_path, verify_checksums=False)
    assert loaded.train.images_NHW.shape == (12, 28, 28) and len(loaded.test) == 5


def test_well_formed_but_different_content_fails_the_checksum(tmp_path):
    tiny_dataset(tmp_path)
    with pytest.raises(DataError, match="not the published mnist.*--no-verify-checksums"):
        data.load("mnist", tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_bad_magic_is_refused(tmp_path, gz):
    tiny_dataset(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    content = b"\x00\x00\x09\x03" + idx_bytes(np.zeros((12, 28, 28)))[4:]
    (tmp_path / f"train-images-idx3-ubyte{suffix}").write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(DataError, match="has IDX magic 00000903, expected 00000803"):
        data.load("mnist", tmp_path)


@pytest.mark.parametrize("gz, name, damage, message", [
    (False, "t10k-labels-idx1-ubyte", lambda raw: b"<html>404 Not Found</html>", "is not an IDX file"),
    (False, "train-images-idx3-ubyte", lambda raw: raw[:-100],
     "is truncated: its header promises shape \\(12, 28, 28\\)"),
    (False, "t10k-labels-idx1-ubyte", lambda raw: raw[:6], "is truncated inside its IDX header"),
    (True, "train-images-idx3-ubyte.gz", lambda raw: raw[:-200], "corrupt or truncated gzip"),
    (False, "t10k-labels-idx1-ubyte", lambda raw: raw + b"\x00", "longer than its header says"),
], ids=["not-idx", "truncated", "truncated-header", "truncated-gzip", "trailing-bytes"])
def test_damaged_file_is_refused_naming_the_file_and_the_fix(tmp_path, gz, name, damage, message):
    tiny_dataset(tmp_path, gz=gz)
    path = tmp_path / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message) as error:
        data.load("mnist", tmp_path)
    assert str(path) in str(error.value) and "--data-dir" in str(error.value)


def test_image_and_label_count_mismatch_is_refused(tmp_path):
    tiny_dataset(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11))
    with pytest.raises(DataError, match="holds 12 images but .* holds 11 labels"):
        data.load("mnist", tmp_path, verify_checksums=False)


def test_out_of_range_label_and_wrong_image_size_are_refused(tmp_path):
    tiny_dataset(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(12, 10))
    with pytest.raises(DataError, match="holds label 10"):
        data.load("mnist", tmp_path, verify_checksums=False)
    tiny_dataset(tmp_path, gz=False)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((12, 32, 32)))
    with pytest.raises(DataError, match="images of 32x32 pixels"):
        data.load("mnist", tmp_path, verify_checksums=False)


def test_missing_files_not_a_directory_and_absent_directory(tmp_path):
    tiny_dataset(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match="lacks t10k-images-idx3-ubyte .*--data-dir DIR or the JAXMNIST_DATA_DIR"):
        data.load("mnist", tmp_path)
    with pytest.raises(DataError, match="is not a directory"):
        data.load("mnist", tmp_path / "train-labels-idx1-ubyte")
    with pytest.raises(DataError, match="does not exist"):
        data.load("mnist", tmp_path / "nowhere")


# tensorflow-datasets, without network ------------------------------------------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def idx_server(tmp_path):
    """A loopback HTTP server standing in for the dataset's host, serving a tiny fixture."""
    served = tmp_path / "served"
    tiny_dataset(served, gz=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_tfds_download_manager_downloads_verifies_and_caches(idx_server, tmp_path):
    from tensorflow_datasets.core.download import checksums

    served, base = idx_server
    urls = {key: f"{base}{name}.gz" for key, name in zip(data._FILES, NAMES)}
    infos = {urls[key]: checksums.compute_url_info(served / f"{name}.gz") for key, name in zip(data._FILES, NAMES)}
    cache = tmp_path / "downloads"
    files = data.download_with_tfds("mnist", urls, infos, cache)
    assert all(path.is_relative_to(cache) for path in files.values())
    images, _ = data.read_idx(files["train_images"], ndim=3)
    expected, _ = data.read_idx(served / "train-images-idx3-ubyte.gz", ndim=3)
    np.testing.assert_array_equal(images, expected)
    # A download whose bytes differ from the registered checksum is refused.
    tampered = {url: checksums.UrlInfo(size=info.size, checksum="0" * 64, filename=info.filename)
                for url, info in infos.items()}
    with pytest.raises(DataError, match="tensorflow-datasets could not download mnist: NonMatchingChecksumError"):
        data.download_with_tfds("mnist", urls, tampered, tmp_path / "other")
    # Cached: a second call needs neither the network probe nor the server.
    shutil.rmtree(served)
    assert data.download_with_tfds("mnist", urls, infos, cache) == files
    assert "tensorflow" not in sys.modules, "the tfds route must run without TensorFlow"


def test_tensorflow_is_not_a_dependency():
    import importlib.metadata
    import re

    names = {re.split(r"[\s;<>=!~\[]", r, maxsplit=1)[0].lower() for r in importlib.metadata.requires("jaxmnist")}
    assert "tensorflow-datasets" in names
    assert not {"tensorflow", "tensorflow-cpu", "tf-nightly", "tensorflow-gpu"} & names


def test_offline_fetch_fails_fast_even_when_dns_hangs(tmp_path, monkeypatch):
    released = threading.Event()

    def black_hole(*args, **kwargs):
        released.wait(60)
        raise socket.gaierror("no answer")

    monkeypatch.setattr(socket, "getaddrinfo", black_hole)
    start = time.monotonic()
    try:
        with pytest.raises(DataError, match="cannot be reached .*timed out.* --data-dir DIR or the JAXMNIST_DATA_DIR"):
            data.fetch_with_tfds("mnist", tmp_path)
    finally:
        released.set()
    assert time.monotonic() - start < data.PROBE_TIMEOUT_S + 2


def test_offline_cli_run_without_data_fails_within_10_seconds(tmp_path):
    """The real thing on an offline machine: `python -m jaxmnist.train` with no data anywhere."""
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
        pytest.skip("this machine is online: the run would download MNIST instead of failing")
    except OSError:
        pass
    env = {k: v for k, v in __import__("os").environ.items() if k != data.DATA_DIR_ENV}
    env["TFDS_DATA_DIR"] = str(tmp_path)
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "jaxmnist.train", "--arch", "gap"], capture_output=True, text=True,
                         env=env, timeout=60)
    elapsed = time.monotonic() - start
    assert run.returncode == 2, run.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert "--data-dir" in run.stderr and data.DATA_DIR_ENV in run.stderr
    assert "Traceback" not in run.stderr
