"""The persistent compilation cache: used by a second run, harmless when corrupt or unusable."""

import json
import os
import subprocess
import sys
from pathlib import Path

from jaxmnist.cache import CACHE_ENV, cache_dir


def train(mnist_dir, tmp_path, cache: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "summary.json"
    run = subprocess.run([sys.executable, "-m", "jaxmnist.train", "--arch", "fc", "--train-size", "640",
                          "--data-dir", str(mnist_dir), "--no-progress", "--json", str(out)],
                         env=dict(os.environ, **{CACHE_ENV: cache}), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run, json.loads(out.read_text())


def entries(folder: Path, suffix: str) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in folder.glob(f"*-{suffix}")}


def test_a_second_run_loads_its_programs_and_a_corrupt_cache_is_compiled_anew(mnist_dir, tmp_path):
    cache = tmp_path / "cache"
    _, first = train(mnist_dir, tmp_path, str(cache))
    programs = entries(cache, "cache")
    assert any(name.startswith("jit_train_steps-") for name in programs)
    read_before = entries(cache, "atime")
    _, second = train(mnist_dir, tmp_path, str(cache))
    read_after = entries(cache, "atime")  # JAX stamps an entry's atime file when it reads it
    trained = [n for n in read_before if n.startswith(("jit__new_run-", "jit_train_steps-", "jit_block_logits-"))]
    assert len(trained) == 3 and all(read_after[n] != read_before[n] for n in trained)
    assert second["test_accuracy"] == first["test_accuracy"]

    for name in entries(cache, "cache"):
        (cache / name).write_bytes(b"not a compiled program")
    run, third = train(mnist_dir, tmp_path, str(cache))
    assert third["test_accuracy"] == first["test_accuracy"]
    assert f"jaxmnist: warning: the compilation cache {cache} holds entries JAX cannot read" in run.stderr
    assert run.stderr.count("compilation cache") == 1 and "Traceback" not in run.stderr


def test_an_unusable_cache_folder_is_a_warning_and_none_turns_it_off(mnist_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    run, _ = train(mnist_dir, tmp_path, str(tmp_path / "file" / "cache"))
    assert f"the compilation cache folder {tmp_path / 'file' / 'cache'} cannot be used (Not a directory): " \
           "compiling from scratch" in run.stderr
    assert cache_dir("none") is None and cache_dir(None, {CACHE_ENV: "None"}) is None
    assert cache_dir(None, {"XDG_CACHE_HOME": "/x"}) == Path("/x/jaxmnist/xla")
