"""Evaluate a run folder's checkpoint (newest, or --step N) on the test split: accuracy, per class, mistakes.

    python -m jaxmnist.evaluate --checkpoint-dir DIR [--step N] [--data-dir D] [--json PATH] [--png PATH]

The test accuracy goes through `trainer.Evaluator` with the evaluation blocks training used, so it is
the run's reported test accuracy to the last digit. `load_run` is the loading half, shared with
`jaxmnist.predict`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from jaxmnist import cli, data, platforms, report, sharding
from jaxmnist.checkpoint import RunDir, Saved, write_json
from jaxmnist.config import Config
from jaxmnist.errors import ConfigError, JaxMnistError
from jaxmnist.plot import pyplot
from jaxmnist.programs import init_run
from jaxmnist.trainer import Evaluator

MISTAKES_SHOWN = 10  # in the text; the picture shows `MISTAKES_DRAWN`
MISTAKES_DRAWN = 24


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A run folder's newest checkpoint, restored for inference onto `mesh`."""

    path: Path
    saved: Saved
    eval_graphdef: object
    state: object
    mesh: jax.sharding.Mesh

    @property
    def config(self) -> Config:
        return self.saved.config

    def evaluator(self, sizes: Sequence[int]) -> Evaluator:
        """The compiled inference program for splits of `sizes` images."""
        return Evaluator(self.config, self.eval_graphdef, self.state, self.mesh, sizes)


def open_run_dir(path: str | Path, step: int | None = None) -> tuple[RunDir, Saved]:
    """The run folder at `path` and its checkpoint `step` (None: the newest), its metadata verified.

    Raises ConfigError or CheckpointError naming the fix. The caller closes the RunDir.
    """
    run_dir = RunDir(path)
    if not run_dir.path.is_dir():
        raise ConfigError(f"Invalid configuration: --checkpoint-dir {run_dir.path} is not a folder: point it at the "
                          "folder a run wrote with `python -m jaxmnist.train --checkpoint-dir DIR`.")
    try:
        saved = run_dir.read(step)
        run_dir.check_config_file(saved)
    except JaxMnistError:
        run_dir.close()
        raise
    return run_dir, saved


def load_run(path: str | Path, devices: int | None = 1, step: int | None = None) -> LoadedRun:
    """Restores checkpoint `step` (None: the newest) of run folder `path` onto a mesh of `devices`
    devices (None: all), verified against its checksums.

    The model and optimiser are built as the run built them, with one step per epoch: only the
    learning-rate schedule depends on it, and that is a function, not an array of the checkpoint.

    Raises:
        ConfigError: `path` is not a run folder with a checkpoint, or `devices` are not there.
        CheckpointError: the checkpoint is damaged.
    """
    run_dir, saved = open_run_dir(path, step)
    try:
        mesh = sharding.make_mesh(devices)
        _, eval_graphdef, state, _ = init_run(saved.config, 1, platforms.of(mesh))
        placement = sharding.replicated(mesh)
        # The checkpoint's tree is `Trainer.checkpoint_arrays`: the state and the epoch's running metrics.
        target = {"state": sharding.put(state, placement), "metrics": sharding.put(np.zeros(3, np.float32), placement)}
        state = run_dir.restore(saved, target)["state"]
    finally:
        run_dir.close()
    return LoadedRun(run_dir.path, saved, eval_graphdef, state, mesh)


def check_run(path: str | Path, step: int | None = None) -> None:
    """Fails before any work when `path` is not a run folder with an intact-looking checkpoint `step`."""
    run_dir, _ = open_run_dir(path, step)
    run_dir.close()


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Test-split results; `confusion_KK[true, predicted]` counts images."""

    accuracy: float
    confusion_KK: np.ndarray
    probabilities_NK: np.ndarray
    labels_N: np.ndarray

    @property
    def per_class(self) -> np.ndarray:
        return np.diag(self.confusion_KK) / self.confusion_KK.sum(1)

    def mistakes(self, count: int) -> np.ndarray:
        """Indices of the `count` misclassified images the model was surest of, surest first."""
        predicted_N = self.probabilities_NK.argmax(-1)
        wrong = np.flatnonzero(predicted_N != self.labels_N)
        return wrong[np.argsort(-self.probabilities_NK[wrong].max(-1), kind="stable")][:count]


def evaluate(run: LoadedRun, test: data.Split) -> Evaluation:
    """Runs the test split through the run's model, in the batches training evaluated it in."""
    # The blocks and batches training evaluated in (its splits: test and validation): the same program,
    # the same logits.
    sizes = [len(test), run.config.val_size] if run.config.val_size else [len(test)]
    evaluator = run.evaluator(sizes)
    logits_NK = evaluator.logits(run.state, evaluator.put(test))
    # `Evaluator.accuracy`'s own expression, on these logits rather than on a second pass over the split.
    accuracy = float(np.mean(logits_NK.argmax(-1) == test.labels_N))
    probabilities_NK = np.asarray(jax.nn.softmax(logits_NK, axis=-1))
    k = logits_NK.shape[-1]
    confusion_KK = np.bincount(test.labels_N * k + logits_NK.argmax(-1), minlength=k * k).reshape(k, k)
    return Evaluation(accuracy, confusion_KK, probabilities_NK, test.labels_N)


def format_evaluation(result: Evaluation, names: Sequence[str]) -> str:
    per_class = report.markdown_table(
        ["class", "test images", "correct", "accuracy"],
        [[name, f"{row.sum():,}", f"{row[k]:,}", f"{acc:.2%}"]
         for k, (name, row, acc) in enumerate(zip(names, result.confusion_KK, result.per_class))])
    confusion = report.markdown_table(
        ["true \\ predicted", *names],
        [[name, *(str(c) for c in row)] for name, row in zip(names, result.confusion_KK)])
    mistakes = report.markdown_table(
        ["test index", "true", "predicted", "confidence"],
        [[str(i), names[result.labels_N[i]], names[result.probabilities_NK[i].argmax()],
          f"{result.probabilities_NK[i].max():.2%}"] for i in result.mistakes(MISTAKES_SHOWN)])
    n = len(result.labels_N)
    return (f"test accuracy  {result.accuracy:.2%} ({int(np.trace(result.confusion_KK)):,} of {n:,})\n\n"
            f"{per_class}\n\nconfusion matrix (rows: true class, columns: predicted)\n\n{confusion}\n\n"
            f"most confident mistakes\n\n{mistakes}")


def to_json(run: LoadedRun, result: Evaluation, names: Sequence[str]) -> dict:
    return {
        "checkpoint_dir": str(run.path),
        "global_step": run.saved.global_step,
        "arch": run.config.arch,
        "dataset": run.config.dataset,
        "test_accuracy": result.accuracy,
        "classes": list(names),
        "per_class_accuracy": result.per_class.tolist(),
        "confusion_matrix": result.confusion_KK.tolist(),
        "mistakes": [{"index": int(i), "true": int(result.labels_N[i]),
                      "predicted": int(result.probabilities_NK[i].argmax()),
                      "confidence": float(result.probabilities_NK[i].max())}
                     for i in result.mistakes(MISTAKES_DRAWN)],
        "device": report.device_description(),
    }


def draw(path: str | Path, result: Evaluation, test: data.Split, names: Sequence[str], title: str) -> None:
    """The confusion matrix beside a grid of the most confident mistakes, as a PNG."""
    plt = pyplot()
    fig = plt.figure(figsize=(15, 6.5))
    grid = fig.add_gridspec(1, 2, width_ratios=(1, 1.15), wspace=0.3)
    ax = fig.add_subplot(grid[0])
    # Log colours: the diagonal's ~1,000 would wash out the off-diagonal handfuls on a linear scale.
    confusion_KK = result.confusion_KK
    ax.imshow(np.log1p(confusion_KK), cmap="Blues")
    threshold = np.log1p(confusion_KK).max() / 2
    for (i, j), count in np.ndenumerate(confusion_KK):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if np.log1p(count) > threshold else "black")
    k = len(names)
    long_names = max(map(len, names)) > 2
    ax.set_xticks(range(k), names, rotation=45 if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix, test accuracy {result.accuracy:.2%}")

    mistakes = result.mistakes(MISTAKES_DRAWN)
    columns = 6
    cells = grid[1].subgridspec(max(1, -(-len(mistakes) // columns)), columns, hspace=0.75, wspace=0.25)
    for n, i in enumerate(mistakes):
        cell = fig.add_subplot(cells[n // columns, n % columns])
        cell.imshow(test.images_NHW[i], cmap="gray", vmin=0, vmax=255)
        cell.set_xticks([])
        cell.set_yticks([])
        predicted = result.probabilities_NK[i].argmax()
        # One line each: Fashion-MNIST's names ("Ankle boot") are as wide as the digit.
        cell.set_title(f"true {names[result.labels_N[i]]}\npred {names[predicted]}\n"
                       f"{result.probabilities_NK[i, predicted]:.0%} sure", fontsize=7)
    if not len(mistakes):
        fig.text(0.75, 0.5, "no mistakes", ha="center")
    fig.suptitle(f"{title}: the {len(mistakes)} most confident mistakes on the right", fontsize=11)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every command that reads a run folder shares."""
    parser = cli.Parser(prog=prog, description=description)
    parser.add_argument("--checkpoint-dir", required=True, metavar="DIR",
                        help="the run folder `python -m jaxmnist.train --checkpoint-dir DIR` wrote")
    parser.add_argument("--step", type=int, default=None, metavar="N",
                        help="the checkpoint at global step N (default: the newest; `ls DIR/checkpoints` lists them)")
    parser.add_argument("--devices", type=int, default=1, metavar="N",
                        help="devices to split the batches across (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser("python -m jaxmnist.evaluate", "Evaluate a run folder's newest checkpoint on the test "
                          "split: accuracy overall and per class, the confusion matrix, the surest mistakes.")
    parser.add_argument("--data-dir", metavar="D",
                        help=f"folder with the IDX files (default: the run's, then ${data.DATA_DIR_ENV}, then tfds)")
    parser.add_argument("--png", metavar="PATH",
                        help="also draw the confusion matrix and the surest mistakes into a PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    check_run(args.checkpoint_dir, args.step)
    cli.check_output("--json", args.json)
    cli.check_output("--png", args.png)
    if args.png:
        cli.require_matplotlib("--png")

    run = load_run(args.checkpoint_dir, args.devices, args.step)
    config = run.config
    test = data.load(config.dataset, args.data_dir or config.data_dir, verify_checksums=config.verify_checksums).test
    result = evaluate(run, test)
    names = data.class_names(config.dataset)
    print(f"{config.arch} on {config.dataset}, checkpoint {run.path} at step {run.saved.global_step:,}\n")
    print(format_evaluation(result, names))
    if args.json:
        write_json(args.json, to_json(run, result, names))
    if args.png:
        draw(args.png, result, test, names, f"{config.arch} on {config.dataset}, step {run.saved.global_step:,}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jaxmnist.evaluate`. Exit status: 0 done; 2 bad input."""
    return cli.run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
