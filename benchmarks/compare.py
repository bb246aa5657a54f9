"""JAX (jaxmnist) against the PyTorch originals: the same recipes on the same data, in one run.

    python benchmarks/compare.py --seeds 3 --data-dir ../shared/data/mnist
    python benchmarks/compare.py --arch gap fc --seeds 3 --data-dir ../shared/data/mnist

For each seed and architecture (every model of `jaxmnist.torch_ref.TORCH_MODELS` by default, fc
and gap first), trains the recipe once in each framework, alternating which goes first, with the
same train/validation split, the same image order and the same augmentation family. PyTorch gets
as many threads as XLA:CPU uses (every core). Runs last one epoch unless `--epochs` says otherwise
(0: the recipe's own count), so that a multi-epoch recipe (under20k: 20) is compared on its first
epoch. Prints a markdown table (seconds per epoch with compilation excluded, training images per
second, the JAX/PyTorch time ratio per pair as median, min and max, test accuracy as mean, min and
max) and writes every run to `--json`. Needs the torch extra.
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


def mean_spread(values: list[float], fmt: str) -> str:
    return f"{statistics.mean(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def run(framework: str, config, dataset: data.Dataset, threads: int) -> dict:
    """One training run, as the numbers the table and the JSON need."""
    if framework == "jax":
        result = fit(config, dataset, progress=False)
        extra = {"compile_seconds": result.compile_seconds}
    else:
        result = fit_torch(config, dataset, threads=threads)
        extra = {}
    return {"seconds": result.train_seconds, "epoch_seconds": result.train_seconds / config.epochs,
            "images_per_second": result.images_per_second, "test_accuracy": result.test_accuracy, **extra}


def table_row(arch: str, epochs: int, pairs: list[dict]) -> list[str]:
    def values(framework: str, key: str) -> list[float]:
        return [p[framework][key] for p in pairs]

    ratios = [p["jax"]["seconds"] / p["torch"]["seconds"] for p in pairs]
    return [arch, str(len(pairs)), str(epochs),
            spread(values("jax", "epoch_seconds"), ".2f"), spread(values("torch", "epoch_seconds"), ".2f"),
            f"**{spread(ratios, '.2f')}**", f"{statistics.median(values('jax', 'compile_seconds')):.2f}",
            f"{statistics.median(values('jax', 'images_per_second')):,.0f}",
            f"{statistics.median(values('torch', 'images_per_second')):,.0f}",
            mean_spread(values("jax", "test_accuracy"), ".2%"), mean_spread(values("torch", "test_accuracy"), ".2%")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=tuple(TORCH_MODELS), default=list(TORCH_MODELS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1, one JAX/PyTorch pair each")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs per run, overriding the recipe's (default 1; 0: the recipe's own)")
    parser.add_argument("--train-size", type=int, default=None, help="train on only N images: a smoke test")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default="compare.json")
    args = parser.parse_args(argv)
    threads = os.cpu_count()

    print(report.benchmark_header("jaxmnist vs PyTorch", f"; PyTorch {torch.__version__} with {threads} threads, "
                                                        f"XLA:CPU on all {threads} cores"))
    cut = [f"{arch} ({RECIPES[arch].epochs})" for arch in args.arch if 0 < args.epochs < RECIPES[arch].epochs]
    if args.epochs:
        print(f"Every run trains {args.epochs} epoch(s) (--epochs {args.epochs}; 0 runs each recipe's own count)"
              + (f"; recipes with more, compared on their first {args.epochs}: {', '.join(cut)}" if cut else "")
              + ".\n")
    dataset = data.load("mnist", args.data_dir)
    runs, rows = [], []
    for arch in args.arch:
        pairs, epochs = [], args.epochs or RECIPES[arch].epochs
        for seed in range(args.seeds):
            config = dataclasses.replace(RECIPES[arch], seed=seed, epochs=epochs, train_size=args.train_size)
            order = ("jax", "torch") if seed % 2 == 0 else ("torch", "jax")
            pair = {framework: run(framework, config, dataset, threads) for framework in order}
            print(f"{arch} seed {seed}: jax {pair['jax']['seconds']:.2f} s ({pair['jax']['test_accuracy']:.2%}), "
                  f"torch {pair['torch']['seconds']:.2f} s ({pair['torch']['test_accuracy']:.2%})", file=sys.stderr)
            pairs.append(pair)
            runs.append({"arch": arch, "seed": seed, "epochs": epochs, "first": order[0], **pair})
        rows.append(table_row(arch, epochs, pairs))
    print(report.markdown_table(["arch", "pairs", "epochs", "JAX epoch s, median (min–max)", "PyTorch epoch s",
                                 "JAX / PyTorch time", "JAX compile s", "JAX images/s, median",
                                 "PyTorch images/s", "JAX test acc, mean (min–max)", "PyTorch test acc"], rows))
    Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
