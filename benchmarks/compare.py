"""JAX (jaxmnist) against the PyTorch originals: the same recipes on the same data, in one run.

    python benchmarks/compare.py --arch gap fc --seeds 3 --data-dir ../shared/data/mnist

For each seed and architecture, trains the recipe once in each framework, alternating which goes
first, with the same train/validation split and the same image order. PyTorch gets as many
threads as XLA:CPU uses (every core). Prints a markdown table (epoch seconds with compilation
excluded, the JAX/PyTorch time ratio per pair as median, min and max, test accuracy as mean, min
and max) and writes every run to `--json`. Needs the torch extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from jaxmnist import data, report
from jaxmnist.recipes import RECIPES
from jaxmnist.torch_ref import TORCH_MODELS, fit_torch
from jaxmnist.train import fit


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=tuple(TORCH_MODELS), default=["gap", "fc"])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1, one JAX/PyTorch pair each")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default="compare.json")
    args = parser.parse_args(argv)
    threads = os.cpu_count()

    print(report.benchmark_header("jaxmnist vs PyTorch", f"; PyTorch {torch.__version__} with {threads} threads, "
                                                        f"XLA:CPU on all {threads} cores"))
    dataset = data.load("mnist", args.data_dir)
    runs, rows = [], []
    for arch in args.arch:
        pairs = []
        for seed in range(args.seeds):
            config = dataclasses.replace(RECIPES[arch], seed=seed)
            order = ("jax", "torch") if seed % 2 == 0 else ("torch", "jax")
            pair = {}
            for framework in order:
                if framework == "jax":
                    result = fit(config, dataset, progress=False)
                    pair["jax"] = {"seconds": result.train_seconds, "test_accuracy": result.test_accuracy,
                                   "compile_seconds": result.compile_seconds}
                else:
                    result = fit_torch(config, dataset, threads=threads)
                    pair["torch"] = {"seconds": result.train_seconds, "test_accuracy": result.test_accuracy}
            print(f"{arch} seed {seed}: jax {pair['jax']['seconds']:.2f} s ({pair['jax']['test_accuracy']:.2%}), "
                  f"torch {pair['torch']['seconds']:.2f} s ({pair['torch']['test_accuracy']:.2%})", file=sys.stderr)
            pairs.append(pair)
            runs.append({"arch": arch, "seed": seed, **pair})
        jax_s = [p["jax"]["seconds"] for p in pairs]
        torch_s = [p["torch"]["seconds"] for p in pairs]
        ratios = [p["jax"]["seconds"] / p["torch"]["seconds"] for p in pairs]
        jax_acc = [p["jax"]["test_accuracy"] for p in pairs]
        torch_acc = [p["torch"]["test_accuracy"] for p in pairs]
        compile_s = statistics.median(p["jax"]["compile_seconds"] for p in pairs)
        rows.append([arch, str(len(pairs)), spread(jax_s, ".2f"), spread(torch_s, ".2f"),
                     f"**{spread(ratios, '.2f')}**", f"{compile_s:.2f}",
                     f"{statistics.mean(jax_acc):.2%} ({min(jax_acc):.2%}–{max(jax_acc):.2%})",
                     f"{statistics.mean(torch_acc):.2%} ({min(torch_acc):.2%}–{max(torch_acc):.2%})"])
    print(report.markdown_table(["arch", "pairs", "JAX epoch s, median (min–max)", "PyTorch epoch s",
                                 "JAX / PyTorch time", "JAX compile s", "JAX test acc, mean (min–max)",
                                 "PyTorch test acc"], rows))
    Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
