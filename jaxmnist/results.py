"""What a run measured: per epoch and in all. Plain data, shared by training, reporting and checkpoints."""

from __future__ import annotations

import dataclasses

from jaxmnist.config import Config


@dataclasses.dataclass(frozen=True)
class EpochResult:
    """What one epoch measured. `train_*` are running means over its batches, in train mode."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float | None
    test_accuracy: float
    train_seconds: float
    eval_seconds: float


@dataclasses.dataclass(frozen=True)
class Result:
    """A finished run: its configuration, per-epoch numbers and costs."""

    config: Config
    params: int
    train_images: int
    epochs: tuple[EpochResult, ...]
    compile_seconds: float
    data_seconds: float = 0.0  # reading and checking the dataset
    init_seconds: float = 0.0  # building the model and optimiser, placing state and data on the devices

    @property
    def test_accuracy(self) -> float:
        return self.epochs[-1].test_accuracy

    @property
    def val_accuracy(self) -> float | None:
        return self.epochs[-1].val_accuracy

    @property
    def train_seconds(self) -> float:
        return sum(e.train_seconds for e in self.epochs)

    @property
    def phases(self) -> dict[str, float]:
        """Where the run's time went, in seconds, from loading the data to the last evaluation."""
        return {"data": self.data_seconds, "init": self.init_seconds, "compile": self.compile_seconds,
                "train": self.train_seconds, "eval": sum(e.eval_seconds for e in self.epochs)}

    @property
    def images_per_second(self) -> float:
        return self.train_images * len(self.epochs) / self.train_seconds
