"""The metrics log's scalars as TensorBoard event files (the `tensorboard` extra: tensorboardX).

    python -m jaxmnist.train --arch gap --tensorboard runs/tb
    tensorboard --logdir runs/tb

tensorboardX writes the event files without TensorFlow, which jaxmnist never imports.
"""

from __future__ import annotations

from pathlib import Path

# The metrics log's keys and their TensorBoard tags; the rest (epoch, step, seconds) say where and
# when, which TensorBoard keeps on every point anyway.
TAGS = {
    "loss": "train/loss",
    "accuracy": "train/accuracy",
    "lr": "train/lr",
    "train_loss": "epoch/train_loss",
    "train_accuracy": "epoch/train_accuracy",
    "val_accuracy": "epoch/val_accuracy",
    "test_accuracy": "epoch/test_accuracy",
}
# Seconds between writes to disk, so that a TensorBoard watching the folder follows the run.
FLUSH_SECONDS = 10


class TensorBoardLog:
    """Event files in `folder` (created if missing) holding each metrics-log record's scalars at its
    global `step`. A resumed run adds an event file beside the earlier ones that hides their points
    after its checkpoint, as the metrics log drops its lines after it: TensorBoard shows one history."""

    def __init__(self, folder: str | Path, resumed_at: int | None = None):
        # Imported here: the extra is optional, and every run imports this module (`jaxmnist.loop`);
        # `python -m jaxmnist.train --tensorboard` checks for it before any work (`cli.require_extra`).
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(str(Path(folder).expanduser()), flush_secs=FLUSH_SECONDS,
                                     purge_step=None if resumed_at is None else resumed_at + 1)

    def write(self, **record) -> None:
        """Adds `record`'s metrics (those in TAGS and not None) at `record["step"]`."""
        for key, tag in TAGS.items():
            if record.get(key) is not None:
                self._writer.add_scalar(tag, record[key], record["step"])

    def close(self) -> None:
        """Writes out what is pending and closes the event file."""
        self._writer.close()
