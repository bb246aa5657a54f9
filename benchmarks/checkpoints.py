"""What a checkpoint costs: seconds to save and to restore each recipe's model and optimiser state.

    python benchmarks/checkpoints.py --repeats 5

A run with --checkpoint-dir saves once per epoch (and when stopped), synchronously, between two
chunks of steps: this is the time added to the run per save. Every save records a sha256 of each
array and of every file of the checkpoint, and every restore verifies both; the "checksums" column
is that hashing alone (arrays and files), which save and restore each include once. Prints a
markdown table (median of `--repeats` saves into a fresh folder each, then restores) under the
usual header.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax

from jaxmnist import report
from jaxmnist.checkpoint import CHECKPOINTS, Position, RunDir, checksums, file_digests
from jaxmnist.programs import init_run
from jaxmnist.recipes import RECIPES


def costs(recipe: str, repeats: int) -> list[str]:
    config = RECIPES[recipe]
    _, _, state, params = init_run(config, 1)
    arrays = {"state": state, "metrics": jax.numpy.zeros(3)}
    saves, restores, hashes, size = [], [], [], 0
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            run_dir = RunDir(folder)
            start = time.perf_counter()
            run_dir.save(i, config, Position(), arrays)
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            jax.block_until_ready(run_dir.restore(run_dir.read(i), arrays))
            restores.append(time.perf_counter() - start)
            start = time.perf_counter()
            checksums(arrays)
            file_digests(Path(folder) / CHECKPOINTS / str(i))
            hashes.append(time.perf_counter() - start)
            size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and "checkpoints" in f.parts)
            run_dir.close()
    return [recipe, f"{params:,}", f"{size / 1024:.0f}", f"{statistics.median(saves) * 1000:.0f}",
            f"{statistics.median(restores) * 1000:.0f}", f"{statistics.median(hashes) * 1000:.1f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=tuple(RECIPES), default=["fc", "gap", "conv6", "under20k",
                                                                               "res8k"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(report.benchmark_header("checkpoint cost"))
    rows = [costs(recipe, args.repeats) for recipe in args.arch]
    print(report.markdown_table(["recipe", "params", "checkpoint KiB", "save ms (median)",
                                 "verified restore ms (median)", "checksums ms (median)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
