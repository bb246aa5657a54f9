"""One frozen dataclass holds everything that defines a training run.

Recipes (`jaxmnist.recipes`) are named instances of it; the CLI builds one flag per field and
applies overrides with `dataclasses.replace`, so every field of every recipe is a flag.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field

from jaxmnist.errors import ConfigError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "step", "onecycle", "linear")


def _help(text: str, default=dataclasses.MISSING):
    return field(default=default, metadata={"help": text})


@dataclasses.dataclass(frozen=True)
class Config:
    """A training run: model, data, optimiser and schedule."""

    arch: str = _help("model architecture (a key of jaxmnist.models.MODELS)", "gap")
    dataset: str = _help("mnist or fashion_mnist", "mnist")
    data_dir: str | None = _help("folder with the four IDX files (default: $JAXMNIST_DATA_DIR, then tfds)", None)
    verify_checksums: bool = _help("refuse data whose content is not the published dataset", True)
    seed: int = _help("seeds initialisation, dropout, the train/val split and the shuffle", 0)
    epochs: int = _help("passes over the training split", 1)
    batch_size: int = _help("images per step; the last step of an epoch takes the remainder", 64)
    val_size: int = _help("training images held out for validation (0: none)", 0)
    train_size: int | None = _help("train on the first N images left after the split (none: all); for quick runs",
                                   None)
    mean: float = _help("normalisation mean of pixels scaled to [0, 1]", 0.1307)
    std: float = _help("normalisation standard deviation of pixels scaled to [0, 1]", 0.3081)
    dropout: float | None = _help("dropout rate of the model's dropout layers (none: the model's own default)", None)
    optimizer: str = _help("adam or sgd", "adam")
    lr: float = _help("peak learning rate", 1e-3)
    schedule: str = _help("learning-rate schedule, stepped per batch: constant; cosine decay from lr to final_lr; "
                          "step (StepLR: x decay_factor every decay_epochs); onecycle (PyTorch's OneCycleLR "
                          "peaking at lr, momentum cycled 0.95-0.85); linear decay from lr to final_lr", "constant")
    final_lr: float = _help("learning rate at the end of a cosine or linear schedule", 0.0)
    warmup: float = _help("cosine and linear schedules: fraction of the run's steps spent warming up linearly "
                          "from 0 to lr first", 0.0)
    decay_epochs: int = _help("step schedule: epochs between decays (StepLR's step_size)", 15)
    decay_factor: float = _help("step schedule: factor applied at each decay (StepLR's gamma)", 0.1)
    momentum: float = _help("SGD momentum", 0.9)
    b1: float = _help("Adam's beta1 (the onecycle schedule cycles it instead)", 0.9)
    b2: float = _help("Adam's beta2", 0.999)
    label_smoothing: float = _help("train on labels smoothed by this much (optax.smooth_labels); 0: off", 0.0)
    ema: float | None = _help("evaluate an exponential moving average of the weights with this decay per step "
                              "(none: the weights themselves)", None)
    weight_decay: float = _help("L2 term added to the gradient, as PyTorch's optimisers do (not AdamW)", 0.0)
    clip_norm: float | None = _help("clip gradients to this global norm before the optimiser (none: off)", None)
    rotate: float = _help("augmentation: random rotation within +-this many degrees", 0.0)
    translate: float = _help("augmentation: random shift within +-this fraction of the image size", 0.0)
    scale: float = _help("augmentation: random zoom within [1 - scale, 1 + scale]", 0.0)
    crop_p: float = _help("augmentation: probability of a centre crop to crop_size resized back to 28", 0.0)
    crop_size: int = _help("augmentation: side of that centre crop", 22)
    devices: int | None = _help("devices to split each batch across, data-parallel (none: every visible device)", None)
    distributed: bool = _help("join a multi-host run: JAX finds the cluster on Cloud TPU pods, Slurm, Open MPI "
                              "(elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)", False)

    def validate(self) -> Config:
        """Checks what can be checked without the data; raises ConfigError naming the fix."""
        from jaxmnist.data import DATASETS
        from jaxmnist.models import MODELS, has_dropout

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"Invalid configuration: {f.name} is {value}: every number of a run must be finite; "
                                  f"give --{f.name.replace('_', '-')} a finite value.")
        checks = [
            (0 <= self.seed < 2**32, f"seed is {self.seed}: use a seed in [0, 2**32)"),
            (self.arch in MODELS, f"unknown architecture {self.arch!r}: choose one of {', '.join(MODELS)}"),
            (self.dataset in DATASETS, f"unknown dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}"),
            (self.optimizer in OPTIMIZERS,
             f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}"),
            (self.epochs >= 1, f"epochs is {self.epochs}: train for at least 1 epoch"),
            (self.batch_size >= 1, f"batch size is {self.batch_size}: use a batch size of at least 1"),
            (self.val_size >= 0, f"val_size is {self.val_size}: hold out 0 or more images"),
            (self.train_size is None or self.train_size >= 1,
             f"train_size is {self.train_size}: train on at least 1 image, or none for all of them"),
            (self.lr > 0, f"learning rate is {self.lr}: it must be positive"),
            (0 <= self.final_lr <= self.lr, f"final_lr is {self.final_lr}: it must lie in [0, lr={self.lr}]"),
            (self.dropout is None or 0 <= self.dropout < 1, f"dropout is {self.dropout}: a rate must lie in [0, 1)"),
            (self.dropout is None or self.arch not in MODELS or has_dropout(self.arch),
             f"dropout is {self.dropout} but {self.arch} has no dropout layer: leave dropout unset (none)"),
            (self.decay_epochs >= 1, f"decay_epochs is {self.decay_epochs}: decay every 1 or more epochs"),
            (0 < self.decay_factor <= 1, f"decay_factor is {self.decay_factor}: it must lie in (0, 1]"),
            (0 <= self.rotate <= 180, f"rotate is {self.rotate}: use an angle in [0, 180] degrees"),
            (0 <= self.translate <= 0.5, f"translate is {self.translate}: use a fraction in [0, 0.5]"),
            (0 <= self.scale < 1, f"scale is {self.scale}: use a zoom range in [0, 1)"),
            (0 <= self.crop_p <= 1, f"crop_p is {self.crop_p}: a probability must lie in [0, 1]"),
            (1 <= self.crop_size <= 28, f"crop_size is {self.crop_size}: use a crop side between 1 and 28 pixels"),
            (0 <= self.momentum < 1, f"momentum is {self.momentum}: it must lie in [0, 1)"),
            (0 <= self.b1 < 1 and 0 <= self.b2 < 1,
             f"b1, b2 are {self.b1}, {self.b2}: Adam's betas must lie in [0, 1)"),
            (self.schedule != "onecycle" or self.b1 == 0.9,
             f"b1 is {self.b1} but the onecycle schedule cycles Adam's beta1 (0.95-0.85): leave b1 at 0.9, or choose "
             "another schedule"),
            (0 <= self.warmup < 1, f"warmup is {self.warmup}: use a fraction of the run in [0, 1)"),
            (self.warmup == 0 or self.schedule in ("cosine", "linear"),
             f"warmup is {self.warmup} but the {self.schedule} schedule has none: use cosine or linear, or warmup 0"),
            (0 <= self.label_smoothing < 1, f"label_smoothing is {self.label_smoothing}: it must lie in [0, 1)"),
            (self.ema is None or 0 < self.ema < 1,
             f"ema is {self.ema}: use a decay in (0, 1), e.g. 0.99, or none to evaluate the weights themselves"),
            (self.weight_decay >= 0, f"weight decay is {self.weight_decay}: it must be 0 or positive"),
            (self.clip_norm is None or self.clip_norm > 0,
             f"clip_norm is {self.clip_norm}: use a positive norm, or none to turn clipping off"),
            (self.std > 0, f"std is {self.std}: the normalisation's standard deviation must be positive"),
        ]
        for ok, problem in checks:
            if not ok:
                raise ConfigError(f"Invalid configuration: {problem}.")
        return self

    def validate_sizes(self, n_train: int) -> None:
        """Checks the split and batch sizes against a training set of `n_train` images."""
        if self.val_size >= n_train:
            raise ConfigError(f"Invalid configuration: val_size is {self.val_size} but the training set holds "
                              f"only {n_train} images: hold out fewer.")
        available = n_train - self.val_size
        if self.train_size is not None and self.train_size > available:
            raise ConfigError(f"Invalid configuration: train_size is {self.train_size} but {available} training "
                              "images are left after the validation split: use at most that, or none.")
        if self.batch_size > (self.train_size or available):
            raise ConfigError(f"Invalid configuration: batch size {self.batch_size} is larger than the "
                              f"{self.train_size or available} training images: use a batch size of at most that.")
