"""JAX (jaxmnist) against the PyTorch originals, eager and compiled: the same recipes on the same data, in one run.

    python benchmarks/compare.py --seeds 3 --data-dir ../shared/data/mnist
    python benchmarks/compare.py --arch gap fc --seeds 3 --data-dir ../shared/data/mnist

For each seed and architecture (every model of `jaxmnist.torch_ref.TORCH_MODELS` by default, fc
and gap first), trains the recipe once with jaxmnist, once in eager PyTorch and once with the
PyTorch model under `torch.compile` (inductor; `--no-compiled` leaves it out), each side first in
turn, with the same train/validation split, the same image order and the same augmentation
family. PyTorch gets as many threads as XLA:CPU uses (every core). Both compilers' compilation is
timed apart from the epoch. Runs last one epoch unless `--epochs` says otherwise (0: the recipe's
own count), so that a multi-epoch recipe (under20k: 20) is compared on its first epoch. Prints a
markdown table (seconds per epoch, the jaxmnist/PyTorch time ratios within each round as median,
min and max, compile seconds of the first round, when the process's caches are cold, and the
median of the later ones, test accuracy as mean, min and max; a side whose compilation fails says
so in its cells) and writes every run to `--json`. Needs the torch extra.
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
from jaxmnist.loop import fit
from jaxmnist.recipes import RECIPES
from jaxmnist.torch_ref import TORCH_MODELS, fit_torch


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def mean_spread(values: list[float], fmt: str) -> str:
    return f"{statistics.mean(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


SIDES = {"jax": "jaxmnist", "torch": "PyTorch eager", "compiled": "PyTorch compiled"}


def run(side: str, config, dataset: data.Dataset, threads: int) -> dict:
    """One training run, as the numbers the table and the JSON need; a PyTorch compilation that
    fails is recorded (its error's first line), not raised, so that the other sides still run."""
    try:
        if side == "jax":
            result = fit(config, dataset, progress=False)
        else:
            result = fit_torch(config, dataset, threads=threads, compiled=side == "compiled")
    except Exception as e:  # inductor's failures are many and deep: say which, keep going
        if side != "compiled":
            raise
        return {"failed": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"}
    return {"seconds": result.train_seconds, "epoch_seconds": result.train_seconds / config.epochs,
            "images_per_second": result.images_per_second, "test_accuracy": result.test_accuracy,
            "compile_seconds": result.compile_seconds}


def table_row(arch: str, epochs: int, rounds: list[dict]) -> list[str]:
    def values(side: str, key: str) -> list[float]:
        return [r[side][key] for r in rounds if "failed" not in r[side]]

    def ratio(over: str) -> str:
        pairs = [r["jax"]["seconds"] / r[over]["seconds"] for r in rounds if "failed" not in r[over]]
        return f"**{spread(pairs, '.2f')}**" if pairs else "—"

    def cell(side: str, key: str, show) -> str:
        got = values(side, key)
        if got:
            return show(got)
        return "failed: " + rounds[0][side]["failed"]

    def first_then(v: list[float]) -> str:
        """The first round's compilation (caches cold) / the median of the later rounds' (warm)."""
        return f"{v[0]:.2f} / {statistics.median(v[1:]):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

    return [arch, str(len(rounds)), str(epochs),
            *(cell(side, "epoch_seconds", lambda v: spread(v, ".2f")) for side in SIDES),
            ratio("torch"), ratio("compiled"),
            *(cell(side, "compile_seconds", first_then) for side in ("jax", "compiled")),
            *(cell(side, "test_accuracy", lambda v: mean_spread(v, ".2%")) for side in SIDES)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=tuple(TORCH_MODELS), default=list(TORCH_MODELS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1, one JAX/PyTorch pair each")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs per run, overriding the recipe's (default 1; 0: the recipe's own)")
    parser.add_argument("--train-size", type=int, default=None, help="train on only N images: a smoke test")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default="compare.json")
    parser.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                        help="also train with the model under torch.compile (inductor; default on)")
    args = parser.parse_args(argv)
    threads = os.cpu_count()

    print(report.benchmark_header("jaxmnist vs PyTorch, eager and compiled",
                                  f"; PyTorch {torch.__version__} with {threads} threads, XLA:CPU on all {threads} "
                                  "cores; torch.compile (inductor), compilation timed apart"))
    cut = [f"{arch} ({RECIPES[arch].epochs})" for arch in args.arch if 0 < args.epochs < RECIPES[arch].epochs]
    if args.epochs:
        print(f"Every run trains {args.epochs} epoch(s) (--epochs {args.epochs}; 0 runs each recipe's own count)"
              + (f"; recipes with more, compared on their first {args.epochs}: {', '.join(cut)}" if cut else "")
              + ".\n")
    dataset = data.load("mnist", args.data_dir)
    runs, rows = [], []
    sides = list(SIDES) if args.compiled else ["jax", "torch"]
    for arch in args.arch:
        rounds, epochs = [], args.epochs or RECIPES[arch].epochs
        for seed in range(args.seeds):
            config = dataclasses.replace(RECIPES[arch], seed=seed, epochs=epochs, train_size=args.train_size)
            order = sides[seed % len(sides):] + sides[: seed % len(sides)]  # each side goes first in turn
            one = {side: run(side, config, dataset, threads) for side in order}
            print(f"{arch} seed {seed}: " + ", ".join(
                f"{SIDES[side]} " + (f"{one[side]['seconds']:.2f} s ({one[side]['test_accuracy']:.2%})"
                                     if "failed" not in one[side] else one[side]["failed"]) for side in order),
                file=sys.stderr)
            rounds.append({"compiled": {"failed": "not run (--no-compiled)"}, **one})
            runs.append({"arch": arch, "seed": seed, "epochs": epochs, "first": order[0], **one})
        rows.append(table_row(arch, epochs, rounds))
    print(report.markdown_table(["arch", "rounds", "epochs", "jaxmnist epoch s, median (min–max)",
                                 "PyTorch eager epoch s", "PyTorch compiled epoch s", "jaxmnist / eager time",
                                 "jaxmnist / compiled time", "jaxmnist compile s, first / later",
                                 "PyTorch compile s, first / later",
                                 "jaxmnist test acc, mean (min–max)", "eager test acc", "compiled test acc"], rows))
    Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
