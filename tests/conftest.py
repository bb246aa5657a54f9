"""Shared fixtures: real MNIST from ../shared/data (or $JAXMNIST_DATA_DIR), loaded once."""

import os
from pathlib import Path

import pytest

# The tests run on CPU. With the tpu extra installed (.ci/run installs it, to compile for TPUs),
# JAX would otherwise try libtpu first and print pages of warnings about the missing TPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from jaxmnist import data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent compilation cache for the session's runs (subprocesses inherit it), not the user's."""
    from jaxmnist.cache import CACHE_ENV

    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("xla-cache"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    # Absolute, as subprocesses and the notebook kernel run from other folders.
    folder = Path(os.environ.get(data.DATA_DIR_ENV) or ROOT.parent / "shared" / "data" / "mnist").resolve()
    if not folder.is_dir():
        pytest.fail(f"Real MNIST is needed at {folder}: set {data.DATA_DIR_ENV} to a folder with its four IDX files.")
    return folder


@pytest.fixture(scope="session")
def mnist(mnist_dir) -> data.Dataset:
    return data.load("mnist", mnist_dir)


@pytest.fixture(scope="session")
def trained_run(mnist_dir, tmp_path_factory) -> Path:
    """A run folder (`--checkpoint-dir`) of gap trained for one epoch on 6,400 images, its summary in
    train.json beside the checkpoints; shared by the tests of what reads a run folder."""
    from jaxmnist.train import main

    folder = tmp_path_factory.mktemp("trained") / "run"
    assert main(["--arch", "gap", "--train-size", "6400", "--data-dir", str(mnist_dir), "--checkpoint-dir",
                 str(folder), "--json", str(folder.parent / "train.json"), "--no-progress"]) == 0
    return folder
