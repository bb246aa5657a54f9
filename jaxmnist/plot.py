"""Learning curves from a run's metrics log, as a PNG (the `plot` extra: matplotlib).

    python -m jaxmnist.plot --checkpoint-dir DIR curves.png     # a finished or interrupted run
    python -m jaxmnist.plot --metrics metrics.jsonl curves.png

`python -m jaxmnist.train --plot PATH` calls `learning_curves` when the run ends.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from jaxmnist.checkpoint import METRICS_FILE, read_metrics
from jaxmnist.cli import Parser, check_output, require_matplotlib, run_cli
from jaxmnist.errors import ConfigError


def pyplot():
    """matplotlib.pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(metrics_path: str | Path, png_path: str | Path) -> None:
    """Draws loss, accuracy and learning rate against the global step, with each epoch's val/test accuracy.

    Args:
        metrics_path: the metrics log (JSON lines) `jaxmnist.train` writes.
        png_path: where the PNG goes.

    Raises:
        ConfigError: the log is missing or holds no progress line.
    """
    path = Path(metrics_path)
    if not path.is_file():
        raise ConfigError(f"Invalid configuration: there is no metrics log at {path}: point at the metrics.jsonl of "
                          "a run (`python -m jaxmnist.train --checkpoint-dir DIR` or --metrics PATH writes one).")
    records = read_metrics(path)
    steps = [r for r in records if "loss" in r]
    epochs = [r for r in records if "test_accuracy" in r]
    if not steps:
        raise ConfigError(f"Invalid configuration: the metrics log {path} holds no progress line yet: plot it once "
                          "the run has trained its first chunk of steps.")
    plt = pyplot()
    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    x = [r["step"] for r in steps]
    # A short run logs a few points only: markers keep each one visible.
    marker = "." if len(x) > 30 else "o"
    loss_ax.plot(x, [r["loss"] for r in steps], marker=marker, label="train (since the previous point)")
    loss_ax.set(title="training loss", xlabel="step", ylabel="cross-entropy")
    loss_ax.set_yscale("log")
    plain = _plain_log_formatter()
    loss_ax.yaxis.set_major_formatter(plain())
    loss_ax.yaxis.set_minor_formatter(plain(labelOnlyBase=False))

    acc_ax.plot(x, [100 * r["accuracy"] for r in steps], marker=marker, alpha=0.6,
                label="train (since the previous point)")
    for key, style in (("val_accuracy", "s-"), ("test_accuracy", "D-")):
        points = [(r["step"], 100 * r[key]) for r in epochs if r.get(key) is not None]
        if points:
            name = key.split("_")[0]
            acc_ax.plot(*zip(*points), style, markersize=7, label=f"{name} (end of epoch)")
            # The last value written out: with one epoch it is the only point, and the number people want.
            acc_ax.annotate(f"{points[-1][1]:.2f}%", points[-1], textcoords="offset points",
                            xytext=(-6, 8 if name == "test" else -16), ha="right", fontsize=8)
    acc_ax.set(title="accuracy", xlabel="step", ylabel="accuracy (%)")
    final = [100 * r[k] for r in epochs for k in ("val_accuracy", "test_accuracy") if r.get(k) is not None]
    # From just below the worst end-of-epoch score, or the train curve's own range if that is higher.
    # The first tenth of a long run (near chance) would squash the part worth seeing; a short run shows all.
    low = min([*final, *(100 * r["accuracy"] for r in steps[len(steps) // 10:])])
    acc_ax.set_ylim(max(0, low - 0.5 * (100 - low) - 1), 100)

    lr_ax.plot(x, [r["lr"] for r in steps], marker=marker)
    lr_ax.set(title="learning rate", xlabel="step", ylabel="learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))

    for ax in (loss_ax, acc_ax, lr_ax):
        ax.grid(alpha=0.3)
        ax.set_xlim(0, max(x) * 1.03)
        for r in epochs[:-1]:  # epoch boundaries
            ax.axvline(r["step"], color="grey", lw=0.6, ls=":")
    loss_ax.legend(fontsize=8)
    acc_ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"learning curves: {max(x):,} steps, {len(epochs)} epoch(s) finished ({path})", fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def _plain_log_formatter():
    """A log axis's tick labels as plain numbers (0.3, 1, 2), not 3x10^-1: losses span a decade or two."""
    from matplotlib import ticker

    class Plain(ticker.LogFormatter):
        def _num_to_string(self, x, vmin, vmax):
            return f"{x:g}"

    return Plain


def _main(argv: Sequence[str] | None) -> int:
    parser = Parser(prog="python -m jaxmnist.plot",
                     description="Draw a run's learning curves (loss, accuracy, learning rate) into a PNG.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint-dir", metavar="DIR", help=f"a run folder: plots its {METRICS_FILE}")
    source.add_argument("--metrics", metavar="PATH", help="a metrics log (JSON lines) written by jaxmnist.train")
    parser.add_argument("png", metavar="PNG", help="where the picture goes")
    args = parser.parse_args(argv)
    require_matplotlib("jaxmnist.plot")
    check_output("PNG", args.png, "Nothing was drawn.")
    learning_curves(args.metrics or Path(args.checkpoint_dir) / METRICS_FILE, args.png)
    print(f"wrote {args.png}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jaxmnist.plot`. Exit status: 0 done; 2 bad input."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
