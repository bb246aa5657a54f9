"""What on-device augmentation costs, and what it does to the digits.

    python benchmarks/augmentation.py --arch conv6 res8k --pairs 3 --data-dir ../shared/data/mnist
    python benchmarks/augmentation.py --arch conv6 res8k --pairs 0 --png augmentation.png --data-dir ...

For each architecture, trains its recipe for one epoch (the first of under20k's 20) with and without its augmentation,
alternating which goes first, and prints the epoch seconds (compilation excluded) of both and their
ratio per pair as median, min and max, with the test accuracy of each. `--png` writes a grid of
original digits above their augmented versions under each recipe (needs the `plot` extra:
matplotlib).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import jax
import numpy as np

from jaxmnist import data, report
from jaxmnist.loop import fit
from jaxmnist.programs import augmentation
from jaxmnist.recipes import RECIPES

AUGMENTED = tuple(name for name, recipe in RECIPES.items() if augmentation(recipe).active)
NO_AUGMENTATION = dict(rotate=0.0, translate=0.0, scale=0.0, crop_p=0.0)


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def write_grid(path: str, dataset: data.Dataset, recipes: list[str], columns: int = 12, seed: int = 0) -> None:
    """Row 1: `columns` training digits; then two rows of their augmented draws per recipe."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("benchmarks/augmentation.py: --png needs matplotlib: pip install -e \".[plot]\"")
    images = jax.numpy.asarray(dataset.train.images_NHW[:columns], jax.numpy.float32) / 255.0
    rows = [("original", np.asarray(images))]
    by_augmentation = {}  # recipes that share an augmentation share its rows
    for name in recipes:
        by_augmentation.setdefault(augmentation(RECIPES[name]), []).append(name)
    for augment, names in by_augmentation.items():
        for draw in range(2):
            rows.append((f"{', '.join(names)} #{draw + 1}",
                         np.asarray(augment(jax.random.key(seed * 100 + draw), images))))
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 0.8, len(rows) * 0.9))
    for r, (label, batch) in enumerate(rows):
        for c in range(columns):
            axes[r, c].imshow(batch[c], cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("jaxmnist augmentation: originals and two draws per recipe", fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=AUGMENTED, default=list(AUGMENTED))
    parser.add_argument("--pairs", type=int, default=3, help="with/without pairs per architecture (0: none)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default="augmentation.json")
    parser.add_argument("--png", default=None, help="also write a grid of original and augmented digits here")
    args = parser.parse_args(argv)

    dataset = data.load("mnist", args.data_dir)
    if args.png:
        write_grid(args.png, dataset, args.arch)
    if not args.pairs:
        return 0
    print(report.benchmark_header("epoch time with and without on-device augmentation"))
    runs, rows = [], []
    for arch in args.arch:
        pairs = []
        for i in range(args.pairs):
            with_aug = dataclasses.replace(RECIPES[arch], epochs=1)
            without = dataclasses.replace(with_aug, **NO_AUGMENTATION)
            pair = {}
            for name, config in (("with", with_aug), ("without", without))[:: 1 if i % 2 == 0 else -1]:
                result = fit(config, dataset, progress=False)
                pair[name] = {"seconds": result.train_seconds, "test_accuracy": result.test_accuracy}
            print(f"{arch} pair {i}: with {pair['with']['seconds']:.2f} s, without {pair['without']['seconds']:.2f} s",
                  file=sys.stderr)
            pairs.append(pair)
            runs.append({"arch": arch, "pair": i, **pair})
        ratios = [p["with"]["seconds"] / p["without"]["seconds"] for p in pairs]
        acc = {k: [p[k]["test_accuracy"] for p in pairs] for k in ("with", "without")}
        rows.append([arch, str(len(pairs)), spread([p["with"]["seconds"] for p in pairs], ".2f"),
                     spread([p["without"]["seconds"] for p in pairs], ".2f"), f"**{spread(ratios, '.2f')}**",
                     f"{statistics.mean(acc['with']):.2%}", f"{statistics.mean(acc['without']):.2%}"])
    print(report.markdown_table(["arch", "pairs", "epoch s with, median (min–max)", "epoch s without",
                                 "with / without time", "test acc with (mean)", "test acc without"], rows))
    Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
