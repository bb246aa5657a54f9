"""How the `record` recipe was chosen: one row per lever on the validation split, then its test accuracy.

    python benchmarks/record.py --rows base b1 --seeds 5 --data-dir ../shared/data/mnist
    python benchmarks/record.py --final --seeds 10 --data-dir ../shared/data/mnist

Ablations (the default) train each row's recipe once per seed and print validation accuracy only
(mean, min, max, sd over seeds; the seeded 6,000-image hold-out of the `gap` recipe) with the
median epoch seconds: `fit` also evaluates the test set, and this script drops that number
before it prints or writes anything, so no choice can be made on it. Each row is the `base`
recipe (or its own `arch`) with the overrides the row names. `--final` trains the `record`
recipe as it stands once per seed and prints its test accuracy, beside `gap`'s epoch seconds
measured in the same run (its first three seeds, interleaved with record's), the epoch budget.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
from pathlib import Path

from flax import nnx

from jaxmnist import data, models, report
from jaxmnist.loop import fit
from jaxmnist.recipes import RECIPES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import spread  # noqa: E402  (the sibling benchmark's helper)

# The recipe the ablations start from: gap's optimiser (Adam lr 0.015, cosine to 0.001, L2 1e-4,
# clipping at 1.0, batch 64, 54k/6k split) on the gap4 model.
BASE = dataclasses.replace(RECIPES["gap"], arch="gap4", dropout=None)


# Gap4 with other widths or BatchNorm momentum, registered in models.MODELS only while a row trains one.
VARIANTS = {"gap4-bn05": dict(bn_momentum=0.05), "gap4-16-24-32-47": dict(widths=(16, 24, 32, 47))}


@contextlib.contextmanager
def registered(arch: str):
    """`arch` in the model registry for the duration, if it is one of VARIANTS."""
    if arch not in VARIANTS:
        yield
        return

    class Variant(models.Gap4):
        def __init__(self, *, dropout: float = 0.0, rngs: nnx.Rngs):
            super().__init__(dropout=dropout, rngs=rngs, **VARIANTS[arch])

    models.MODELS[arch] = Variant
    try:
        yield
    finally:
        del models.MODELS[arch]


# Each row: BASE with these overrides. Later rows start from the levers kept so far (docs/models-and-recipes.md).
ROWS: dict[str, dict] = {
    "gap (reference)": dict(arch="gap", dropout=0.1),
    "base": {},
    "b1 0.7, b2 0.9": dict(b1=0.7, b2=0.9),
    "lr 0.01": dict(lr=0.01),
    "lr 0.025": dict(lr=0.025),
    "linear to 0, warmup 0.2": dict(schedule="linear", final_lr=0.0, warmup=0.2),
    "onecycle lr 0.02": dict(schedule="onecycle", lr=0.02, final_lr=0.0),
    "batch 32": dict(batch_size=32),
    "batch 128, lr 0.02": dict(batch_size=128, lr=0.02),
    "label smoothing 0.1": dict(label_smoothing=0.1),
    "ema 0.99": dict(ema=0.99),
    "dropout 0.1": dict(dropout=0.1),
    "bn momentum 0.05": dict(arch="gap4-bn05"),
    "widths 16-24-32-47": dict(arch="gap4-16-24-32-47"),
    "48k training images": dict(train_size=48_000),
}
# Second round: the levers batch one kept (label smoothing; linear decay to 0 after a warmup), then
# the rest again on top of them.
KEPT = dict(label_smoothing=0.1, schedule="linear", final_lr=0.0, warmup=0.2)
ROWS |= {
    "ls 0.1 + linear": KEPT,
    "ls 0.1 + linear, batch 32": KEPT | dict(batch_size=32),
    "ls 0.1 + linear, b1 0.7, b2 0.9": KEPT | dict(b1=0.7, b2=0.9),
    "ls 0.1 + linear, lr 0.025": KEPT | dict(lr=0.025),
    "ls 0.1 + linear, lr 0.008": KEPT | dict(lr=0.008),
    "ls 0.2 + linear": KEPT | dict(label_smoothing=0.2),
    "ls 0.1 + linear, warmup 0.1": KEPT | dict(warmup=0.1),
    "ls 0.1 + linear, dropout 0.1": KEPT | dict(dropout=0.1),
    "ls 0.1 + linear, bn momentum 0.05": KEPT | dict(arch="gap4-bn05"),
    "ls 0.1 + linear, no clip, no L2": KEPT | dict(clip_norm=None, weight_decay=0.0),
}
# Third round: the second round's winners together (each was up on 4/5 seeds or more), then the
# next peak learning rate, and the same recipe on 48,000 of the 54,000 images (does more data help?).
KEPT2 = KEPT | dict(batch_size=32, b1=0.7, b2=0.9)
ROWS |= {
    "ls 0.1 + linear, batch 32, b1 0.7, b2 0.9": KEPT2,
    "... + lr 0.025": KEPT2 | dict(lr=0.025),
    "..., 48k training images": KEPT2 | dict(train_size=48_000),
    "the same levers on gap": KEPT2 | dict(arch="gap", dropout=0.1),
}


def run(config, seeds, dataset) -> list[dict]:
    """One summary per seed, with every test-set number removed."""
    summaries = []
    for seed in seeds:
        summary = report.summary(fit(dataclasses.replace(config, seed=seed), dataset, progress=False))
        summary.pop("test_accuracy")
        for epoch in summary["per_epoch"]:
            epoch.pop("test_accuracy")
        summaries.append(summary)
        print(f"{config.arch} seed {seed}: val {summary['val_accuracy']:.2%}", file=sys.stderr)
    return summaries


def ablations(args, dataset) -> list[dict]:
    base = dataclasses.replace(BASE, data_dir=args.data_dir, train_size=args.train_size)
    rows, runs, reference = [], [], None
    for name in args.rows:
        overrides = dict(ROWS[name])
        if args.train_size and "train_size" in overrides:  # a smoke run keeps its own size
            overrides["train_size"] = min(overrides["train_size"], args.train_size)
        config = dataclasses.replace(base, **overrides)
        with registered(config.arch):
            summaries = run(config, range(args.seeds), dataset)
        runs += [dict(s, lever=name) for s in summaries]
        seconds = statistics.median(s["train_seconds"] for s in summaries)
        val = [s["val_accuracy"] for s in summaries]
        reference = reference or val
        # Seed i holds out the same 6,000 images in every row: the per-seed difference is the paired one.
        paired = [v - r for v, r in zip(val, reference)]
        rows.append([name, f"{summaries[0]['params']:,}", str(len(summaries)), *spread(val),
                     f"{statistics.mean(paired):+.2%} ({sum(d > 0 for d in paired)}/{len(paired)} up)",
                     f"{seconds:.2f}"])
    print(report.markdown_table(["lever", "params", "seeds", "val mean", "min", "max", "sd",
                                 f"vs {args.rows[0]}, paired", "epoch s (median)"], rows))
    return runs


def final(args, dataset) -> list[dict]:
    record = dataclasses.replace(RECIPES["record"], data_dir=args.data_dir, train_size=args.train_size)
    gap = dataclasses.replace(RECIPES["gap"], data_dir=args.data_dir, train_size=args.train_size)
    runs, gap_seconds = [], []
    for seed in range(args.seeds):
        if seed < 3:
            gap_seconds.append(fit(dataclasses.replace(gap, seed=seed), dataset, progress=False).train_seconds)
        result = fit(dataclasses.replace(record, seed=seed), dataset, progress=False)
        runs.append(report.summary(result))
        print(f"record seed {seed}: test {result.test_accuracy:.2%}", file=sys.stderr)
    test = [s["test_accuracy"] for s in runs]
    seconds, gap_median = statistics.median(s["train_seconds"] for s in runs), statistics.median(gap_seconds)
    print(report.markdown_table(
        ["recipe", "arch", "params", "seeds", "test mean", "min", "max", "sd", "runs >= 99.0%", "epoch s (median)",
         "gap epoch s (median, same run)", "ratio"],
        [["record", record.arch, f"{runs[0]['params']:,}", str(len(runs)), *spread(test),
          str(sum(t >= 0.99 for t in test)), f"{seconds:.2f}", f"{gap_median:.2f}", f"{seconds / gap_median:.2f}x"]]))
    print("\nper seed: " + ", ".join(f"{s['seed']}: {s['test_accuracy']:.2%}" for s in runs))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(ROWS), metavar="ROW",
                        help=f"levers to measure (default: all): {', '.join(ROWS)}")
    parser.add_argument("--final", action="store_true", help="the record recipe's test accuracy instead")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--train-size", type=int, default=None, help="train on only N images: a smoke test")
    parser.add_argument("--json", default="record.json", help="where to write every run's summary")
    args = parser.parse_args(argv)

    print(report.benchmark_header("the record recipe: " + ("test accuracy" if args.final else "ablations")))
    dataset = data.load("mnist", args.data_dir)
    runs = final(args, dataset) if args.final else ablations(args, dataset)
    Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
