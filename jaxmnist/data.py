"""MNIST and Fashion-MNIST as uint8 arrays, from a local IDX directory or through tfds.

Both routes end in the same strict IDX parser: magic number, dimensions, payload length, label
range and image/label agreement are checked, and the decompressed content is compared with the
published sha256, so a truncated download or a wrong folder is refused with a message that says
what to do, never trained on.

Where the files come from, first match wins:
1. `data_dir` (the CLI's `--data-dir`), or the `JAXMNIST_DATA_DIR` environment variable: a folder
   with the four standard files, `.gz` or not (or with a `mnist/` / `fashion-mnist/` subfolder).
2. tensorflow-datasets' download manager, TF-free: it downloads, checks and caches the `.gz` files
   under `$TFDS_DATA_DIR/downloads` (default `~/tensorflow_datasets/downloads`). Before it is
   allowed near the network, a bounded connection probe runs, because offline tfds retries for
   minutes before it gives up.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import socket
import threading
import urllib.parse
import zlib
from pathlib import Path

import numpy as np

from jaxmnist.errors import DataError

DATA_DIR_ENV = "JAXMNIST_DATA_DIR"
DATASETS = ("mnist", "fashion_mnist")
PROBE_TIMEOUT_S = 4.0

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# sha256 of the decompressed files (the .gz bytes vary with the compressor; the content does not).
_SHA256 = {
    "mnist": {
        "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
# Images in each dataset's train and test splits: what the checksums above pin, known before any download.
SIZES = {"mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000)}
_SUBFOLDERS = {"mnist": ("mnist",), "fashion_mnist": ("fashion-mnist", "fashion_mnist")}
_REPLACE = (f"Replace it with a fresh download, or point --data-dir (or {DATA_DIR_ENV}) at a folder with an "
            "intact copy.")
_IDX_UBYTE = 0x08
_NUM_CLASSES = 10


_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot")


def class_names(dataset: str) -> tuple[str, ...]:
    """What each label means: the digit itself for MNIST, the garment for Fashion-MNIST."""
    return _FASHION_CLASSES if dataset == "fashion_mnist" else tuple(str(k) for k in range(_NUM_CLASSES))


def _fix_hint(dataset: str) -> str:
    return (
        f"Point jaxmnist at a folder holding the four IDX files of {dataset} ({', '.join(_FILES.values())}, "
        f"gzip-compressed or not) with --data-dir DIR or the {DATA_DIR_ENV} environment variable."
    )


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: `images_NHW` uint8 in [0, 255], `labels_N` int32 in [0, 9]."""

    images_NHW: np.ndarray
    labels_N: np.ndarray

    def __len__(self) -> int:
        return len(self.labels_N)

    def take(self, indices: np.ndarray) -> Split:
        return Split(self.images_NHW[indices], self.labels_N[indices])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset's train and test splits, and where they were read from."""

    name: str
    train: Split
    test: Split
    source: str


def read_idx(path: Path, *, ndim: int) -> tuple[np.ndarray, bytes]:
    """Parses one IDX file of unsigned bytes (gzip-compressed or not) and checks its structure.

    Returns:
        The array, and the decompressed file content (for the checksum).

    Raises:
        DataError: unreadable, not gzip/IDX, wrong type or rank, truncated, or trailing bytes.
    """
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise DataError(f"{path} is not an IDX file: its first bytes are {raw[:4].hex() or 'missing'}, "
                        "not an IDX magic number (00 00 08 0N). " + _REPLACE)
    if raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise DataError(f"{path} has IDX magic {raw[:4].hex()}, expected 000008{ndim:02x} "
                        f"(unsigned bytes, {ndim} dimensions): it is not the file its name says. " + _REPLACE)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its IDX header ({len(raw)} bytes). " + _REPLACE)
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path} is {kind}: its header promises shape {shape} ({expected} bytes) "
                        f"but it holds {len(raw)} bytes. " + _REPLACE)
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape), raw


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e.strerror}.") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path} is a corrupt or truncated gzip file ({e}). " + _REPLACE) from None


def _load_split(dataset: str, images_path: Path, labels_path: Path) -> tuple[Split, bytes, bytes]:
    images, images_raw = read_idx(images_path, ndim=3)
    labels, labels_raw = read_idx(labels_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path} holds images of {images.shape[1]}x{images.shape[2]} pixels; "
                        f"{dataset} images are 28x28.")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels: the two files are from different downloads.")
    if labels.size and labels.max() >= _NUM_CLASSES:
        raise DataError(f"{labels_path} holds label {labels.max()}; {dataset} labels are 0-9.")
    return Split(images, labels.astype(np.int32)), images_raw, labels_raw


def _verify_checksum(dataset: str, key: str, path: Path, content: bytes) -> None:
    digest = hashlib.sha256(content).hexdigest()
    if digest == _SHA256[dataset][key]:
        return
    others = [name for name in DATASETS if _SHA256[name][key] == digest]
    if others:
        raise DataError(f"{path} is {others[0]}, not {dataset}: pass --dataset {others[0]}, "
                        f"or point --data-dir at the {dataset} files.")
    raise DataError(f"{path} is a well-formed IDX file but not the published {dataset} "
                    f"(sha256 of its content {digest[:16]}..., expected {_SHA256[dataset][key][:16]}...). "
                    + _REPLACE + " Or pass --no-verify-checksums to train on modified data on purpose.")


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def local_files(dataset: str, data_dir: str | os.PathLike, origin: str = "") -> dict[str, Path]:
    """The four IDX files of `dataset` in `data_dir` (or in its `mnist/`-style subfolder).

    `origin` says where `data_dir` came from, for the error messages (e.g. " (from $VAR)").
    """
    folder = Path(data_dir).expanduser()
    if not folder.exists():
        raise DataError(f"The data directory {folder}{origin} does not exist. {_fix_hint(dataset)}")
    if not folder.is_dir():
        raise DataError(f"The data directory {folder}{origin} is not a directory. {_fix_hint(dataset)}")
    for candidate in (folder, *(folder / sub for sub in _SUBFOLDERS[dataset])):
        found = {key: _find_file(candidate, name) for key, name in _FILES.items()}
        if all(found.values()):
            return found
    missing = [name for key, name in _FILES.items() if _find_file(folder, name) is None]
    raise DataError(f"The data directory {folder}{origin} lacks {', '.join(missing)} (with or without .gz). "
                    f"{_fix_hint(dataset)}")


def load(dataset: str = "mnist", data_dir: str | os.PathLike | None = None, *,
         verify_checksums: bool = True) -> Dataset:
    """Loads `dataset`'s train and test splits as uint8 images and int32 labels.

    Args:
        dataset: "mnist" or "fashion_mnist".
        data_dir: a folder with the four IDX files; None falls back on `$JAXMNIST_DATA_DIR`, then
            on tensorflow-datasets' download (and cache).
        verify_checksums: compare the content with the published sha256 (off only for data modified
            on purpose).

    Raises:
        DataError: with the reason and the fix, for anything that is not the real dataset.
    """
    if dataset not in DATASETS:
        raise DataError(f"Unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}.")
    origin = ""
    if not data_dir and os.environ.get(DATA_DIR_ENV):
        data_dir, origin = os.environ[DATA_DIR_ENV], f" (from ${DATA_DIR_ENV})"
    if data_dir:
        files, source = local_files(dataset, data_dir, origin), str(Path(data_dir).expanduser())
    else:
        files, source = fetch_with_tfds(dataset), "tensorflow-datasets download cache"
    # Every file's structure first, so that a broken file is named as broken, not as a checksum mismatch.
    train, *train_raw = _load_split(dataset, files["train_images"], files["train_labels"])
    test, *test_raw = _load_split(dataset, files["test_images"], files["test_labels"])
    if verify_checksums:
        for key, content in zip(_FILES, (*train_raw, *test_raw)):
            _verify_checksum(dataset, key, files[key], content)
    return Dataset(dataset, train, test, source)


def split_train_val(train: Split, val_size: int, seed: int) -> tuple[Split, Split | None]:
    """A random train/validation split, the same for the same seed (the GAP recipe's 54k/6k)."""
    if val_size == 0:
        return train, None
    train_idx, val_idx = train_val_indices(len(train), val_size, seed)
    return train.take(train_idx), train.take(val_idx)


def train_val_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which of `n` training images `split_train_val` keeps for training, and which it holds out."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def tfds_download_dir() -> Path:
    """Where tfds keeps downloads: `$TFDS_DATA_DIR/downloads`, as tfds itself does."""
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser() / "downloads"


def fetch_with_tfds(dataset: str, download_dir: Path | None = None) -> dict[str, Path]:
    """Downloads (or finds cached) the four `.gz` files with tfds' download manager, without TF."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"No local {dataset} files were given and tensorflow-datasets is not installed. "
                        f"{_fix_hint(dataset)}") from None
    builder = tfds.builder_cls(dataset)
    urls = {key: urllib.parse.urljoin(builder.URL, f"{name}.gz") for key, name in _FILES.items()}
    return download_with_tfds(dataset, urls, builder.url_infos, download_dir or tfds_download_dir())


def download_with_tfds(dataset: str, urls: dict[str, str], url_infos: dict, download_dir: Path) -> dict[str, Path]:
    """tfds' download manager over `urls`, checked against `url_infos`, after a bounded probe."""
    from tensorflow_datasets.core.download import DownloadManager, resource

    cached = all(resource.is_locally_cached(download_dir / resource.get_dl_fname(url, url_infos[url].checksum))
                 for url in urls.values() if url in url_infos)
    if not cached:
        for host in {urllib.parse.urlsplit(url) for url in urls.values()}:
            _probe(dataset, host)
    manager = DownloadManager(download_dir=download_dir, url_infos=url_infos, dataset_name=dataset)
    try:
        return {key: Path(path) for key, path in manager.download(urls).items()}
    except Exception as e:  # tfds raises a zoo of network, checksum and IO errors
        raise DataError(f"tensorflow-datasets could not download {dataset}: {type(e).__name__}: {e}. "
                        f"{_fix_hint(dataset)}") from None


def _probe(dataset: str, url: urllib.parse.SplitResult) -> None:
    """Fails within PROBE_TIMEOUT_S if `url`'s host cannot be reached (DNS included)."""
    port = url.port or (443 if url.scheme == "https" else 80)
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    # getaddrinfo ignores socket timeouts, so the whole probe runs in a thread we stop waiting for.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    if not outcome or outcome[0] is not None:
        reason = "timed out" if not outcome else str(outcome[0])
        raise DataError(f"No local {dataset} files were given and {url.hostname}:{port} cannot be reached to "
                        f"download them ({reason}); this machine looks offline. {_fix_hint(dataset)}")
