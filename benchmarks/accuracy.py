"""Accuracy over seeds: each architecture's recipe trained once per seed, one run after another.

    python benchmarks/accuracy.py --arch gap fc --seeds 5 --data-dir ../shared/data/mnist

Prints a markdown table (test and validation accuracy as mean, min, max and sd over seeds; the
median epoch seconds with compilation excluded) under a header naming the device and versions,
and writes every run's summary to `--json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

from jaxmnist import data, report
from jaxmnist.recipes import RECIPES
from jaxmnist.train import fit


def spread(values: list[float]) -> list[str]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return [f"{statistics.mean(values):.2%}", f"{min(values):.2%}", f"{max(values):.2%}", f"{sd:.2%}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=tuple(RECIPES), default=["gap", "fc"],
                        help="recipes to run: each architecture's own, or a preset such as gap-b512")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--train-size", type=int, default=None, help="train on only N images: a smoke test")
    parser.add_argument("--json", default="accuracy.json", help="where to write every run's summary")
    args = parser.parse_args(argv)

    print(report.benchmark_header("accuracy over seeds"))
    dataset = data.load("mnist", args.data_dir)
    rows, runs = [], []
    for arch in args.arch:
        summaries = []
        for seed in range(args.seeds):
            config = dataclasses.replace(RECIPES[arch], seed=seed, data_dir=args.data_dir, train_size=args.train_size)
            result = fit(config, dataset, progress=False)
            summaries.append(report.summary(result))
            print(f"{arch} seed {seed}: test {result.test_accuracy:.2%}, {result.train_seconds:.2f} s", file=sys.stderr)
        runs += summaries
        test = [s["test_accuracy"] for s in summaries]
        val = [s["val_accuracy"] for s in summaries if s["val_accuracy"] is not None]
        seconds = statistics.median(s["train_seconds"] / s["epochs"] for s in summaries)
        rows.append([arch, f"{summaries[0]['params']:,}", str(len(summaries)), *spread(test),
                     *(spread(val) if val else ["n/a", "", "", ""]), f"{seconds:.2f}",
                     f"{statistics.median(s['compile_seconds'] for s in summaries):.2f}"])
    print(report.markdown_table(["arch", "params", "seeds", "test mean", "min", "max", "sd", "val mean", "min", "max",
                                 "sd", "epoch s (median)", "compile s (median)"], rows))
    for s in runs:
        if s["epochs"] > 1:
            print(f"\n{s['arch']}, seed {s['seed']}, epoch by epoch:\n\n{report.format_epochs(s['per_epoch'])}")
    Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
