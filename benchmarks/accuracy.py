"""Accuracy over seeds: each architecture's recipe trained once per seed, one run after another.

    python benchmarks/accuracy.py --arch gap fc --seeds 5 --data-dir ../shared/data/mnist

Prints a markdown table (test and validation accuracy as mean, min, max and sd over seeds; the
median epoch seconds with compilation excluded) under a header naming the device and versions,
and writes every run's summary to `--json`. With `--vmap`, the same seeds are then trained again
side by side in one compiled program (`jaxmnist.seeds.fit_seeds`, `jax.vmap` over the runs), and a
second table gives the throughput gain over training them one after another.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

from jaxmnist import data, report
from jaxmnist.loop import fit
from jaxmnist.recipes import RECIPES
from jaxmnist.seeds import fit_seeds


def spread(values: list[float]) -> list[str]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return [f"{statistics.mean(values):.2%}", f"{min(values):.2%}", f"{max(values):.2%}", f"{sd:.2%}"]


def vmap_row(arch: str, one_by_one: list[dict], together: list[dict]) -> list[str]:
    sequential = sum(s["train_seconds"] for s in one_by_one)
    joint = together[0]["train_seconds"]  # one wall time for all the runs
    compile_s = statistics.median(s["compile_seconds"] for s in one_by_one)
    return [arch, str(len(together)), f"{sequential:.2f}", f"{joint:.2f}", f"**{sequential / joint:.2f}x**",
            f"{compile_s:.2f} / {together[0]['compile_seconds']:.2f}",
            f"{statistics.mean(s['test_accuracy'] for s in one_by_one):.2%}",
            f"{statistics.mean(s['test_accuracy'] for s in together):.2%}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=tuple(RECIPES), default=["gap", "fc"],
                        help="recipes to run: each architecture's own, or a preset such as gap-b512")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="mnist", choices=data.DATASETS, help="the dataset every recipe trains on")
    parser.add_argument("--train-size", type=int, default=None, help="train on only N images: a smoke test")
    parser.add_argument("--devices", type=int, default=None,
                        help="split each batch across the first N devices (default: all; --vmap runs on one)")
    parser.add_argument("--json", default="accuracy.json", help="where to write every run's summary")
    parser.add_argument("--vmap", action="store_true",
                        help="also train the seeds side by side in one program (jax.vmap) and report the throughput "
                             "gain over one after another")
    args = parser.parse_args(argv)

    print(report.benchmark_header("accuracy over seeds"))
    dataset = data.load(args.dataset, args.data_dir)
    rows, runs, side_by_side = [], [], []
    for arch in args.arch:
        summaries = []
        for seed in range(args.seeds):
            config = dataclasses.replace(RECIPES[arch], seed=seed, data_dir=args.data_dir, train_size=args.train_size,
                                         devices=args.devices, dataset=args.dataset)
            result = fit(config, dataset, progress=False)
            summaries.append(report.summary(result))
            print(f"{arch} seed {seed}: test {result.test_accuracy:.2%}, {result.train_seconds:.2f} s", file=sys.stderr)
        runs += summaries
        if args.vmap:
            config = dataclasses.replace(RECIPES[arch], data_dir=args.data_dir, train_size=args.train_size,
                                         dataset=args.dataset)
            together = [report.summary(r) for r in fit_seeds(config, range(args.seeds), dataset)]
            print(f"{arch} seeds side by side: {together[0]['train_seconds']:.2f} s", file=sys.stderr)
            side_by_side.append(vmap_row(arch, summaries, together))
            runs += [dict(s, side_by_side=True) for s in together]
        test = [s["test_accuracy"] for s in summaries]
        val = [s["val_accuracy"] for s in summaries if s["val_accuracy"] is not None]
        seconds = statistics.median(s["train_seconds"] / s["epochs"] for s in summaries)
        rows.append([arch, f"{summaries[0]['params']:,}", str(len(summaries)), *spread(test),
                     *(spread(val) if val else ["n/a", "", "", ""]), f"{seconds:.2f}",
                     f"{statistics.median(s['compile_seconds'] for s in summaries):.2f}"])
    print(report.markdown_table(["arch", "params", "seeds", "test mean", "min", "max", "sd", "val mean", "min", "max",
                                 "sd", "epoch s (median)", "compile s (median)"], rows))
    if side_by_side:
        print("\nThe same seeds trained side by side in one program (jax.vmap over runs) against one after another "
              "(train seconds of all seeds, compilation excluded):\n")
        print(report.markdown_table(["arch", "seeds", "one after another s", "side by side s", "throughput gain",
                                     "compile s (one run / side by side)", "test mean, one by one",
                                     "test mean, side by side"], side_by_side))
    for s in runs:
        if s["epochs"] > 1 and not s.get("side_by_side"):
            print(f"\n{s['arch']}, seed {s['seed']}, epoch by epoch:\n\n{report.format_epochs(s['per_epoch'])}")
    Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
