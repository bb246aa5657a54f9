"""Training: the loss, compiled train and evaluation steps, the epoch loop, `fit`, and `main`.

The loop is functional where speed needs it: the model and optimiser are split once into a
static graph definition and a state pytree, the state is donated to each compiled step, and the
whole dataset sits on the device as uint8, gathered and normalised inside the step. Nothing
crosses to the host but a 3-number metrics vector when the progress bar redraws.

Run `python -m jaxmnist.train --help` for the flags.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding

from jaxmnist import data, distributed, sharding
from jaxmnist.augment import Augmentation
from jaxmnist.config import Config
from jaxmnist.models import build, count_params
from jaxmnist.optim import averaged_params, make_optimizer

EVAL_BATCH = 2_000
PROGRESS_EVERY = 50  # steps per compiled chunk; the progress bar redraws (and syncs) between chunks


NO_AUGMENTATION = Augmentation()


def to_unit(images_BHW: jax.Array) -> jax.Array:
    """uint8 pixels to float32 in [0, 1], PyTorch's ToTensor."""
    return images_BHW.astype(jnp.float32) / 255.0


def normalize(pixels_BHW: jax.Array, mean: float, std: float) -> jax.Array:
    """[0, 1] pixels to the standardised `x_BHWC` the models take, PyTorch's Normalize."""
    return ((pixels_BHW - mean) / std)[..., None]


def loss_fn(model: nnx.Module, x_BHWC: jax.Array, labels_B: jax.Array, *,
            label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
    logits_BK = model(x_BHWC)
    if label_smoothing:
        targets_BK = optax.smooth_labels(jax.nn.one_hot(labels_B, logits_BK.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits_BK, targets_BK).mean(), logits_BK
    return optax.softmax_cross_entropy_with_integer_labels(logits_BK, labels_B).mean(), logits_BK


def train_step(graphdef, state, metrics_3, images_NHW, labels_N, order_N, start, *, batch_size: int, mean: float,
               std: float, split: NamedSharding, augmentation: Augmentation = NO_AUGMENTATION,
               augment_key: jax.Array | None = None, label_smoothing: float = 0.0):
    """One optimiser step on the batch `order_N[start:start + batch_size]`, split across devices
    as `split` says (the data, state and metrics are replicated).

    The batch is augmented with a key folded from `augment_key` and the optimiser's step count, so
    every step of a run draws anew and a rerun draws the same. `metrics_3` accumulates (sum of
    losses, correct predictions, images) over an epoch.
    """
    model, optimizer = nnx.merge(graphdef, state)
    idx_B = jax.lax.with_sharding_constraint(jax.lax.dynamic_slice_in_dim(order_N, start, batch_size), split)
    labels_B = labels_N[idx_B]
    pixels_BHW = to_unit(images_NHW[idx_B])
    if augmentation.active:
        pixels_BHW = augmentation(jax.random.fold_in(augment_key, optimizer.step[...]), pixels_BHW)
    grad_fn = nnx.value_and_grad(functools.partial(loss_fn, label_smoothing=label_smoothing), has_aux=True)
    (loss, logits_BK), grads = grad_fn(model, normalize(pixels_BHW, mean, std), labels_B)
    optimizer.update(model, grads)
    correct = (logits_BK.argmax(-1) == labels_B).sum()
    metrics_3 = metrics_3 + jnp.stack([loss * batch_size, correct, batch_size]).astype(jnp.float32)
    return nnx.state((model, optimizer)), metrics_3


def train_steps(graphdef, state, metrics_3, images_NHW, labels_N, order_N, first, last, *, batch_size: int,
                **step_options):
    """Steps `first` to `last - 1` of an epoch (batch i is `order_N[i * batch_size:][:batch_size]`)
    in one compiled loop.

    One dispatch per chunk rather than per step: on two cores the Python thread that dispatches
    steps competes with XLA's compute threads, and a loop inside the program ran 1.34x the steps/s
    of a Python loop of jitted steps (benchmarks/scan_repro.py). That needs every convolution in
    the canonical layout, which `jaxmnist.layers.conv2d` guarantees.
    """
    def body(i, carry):
        return train_step(graphdef, *carry, images_NHW, labels_N, order_N, i * batch_size, batch_size=batch_size,
                          **step_options)

    return jax.lax.fori_loop(first, last, body, (state, metrics_3))


def eval_step(graphdef, state, images_EHW, labels_E, n_valid, *, mean: float, std: float,
              split: NamedSharding) -> jax.Array:
    """Correct predictions among the first `n_valid` of a (padded) evaluation batch."""
    model, optimizer = nnx.merge(graphdef, state)
    if (average := averaged_params(optimizer.opt_state)) is not None:  # the recipe evaluates a weight average
        nnx.update(model, average)
    images_EHW = jax.lax.with_sharding_constraint(images_EHW, split)
    logits_EK = model(normalize(to_unit(images_EHW), mean, std))
    valid_E = jnp.arange(labels_E.shape[0]) < n_valid
    return ((logits_EK.argmax(-1) == labels_E) & valid_E).sum()


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
    """A split on the device, padded to whole evaluation batches; `n` images are real."""

    images_NHW: jax.Array
    labels_N: jax.Array
    n: int

    @classmethod
    def put(cls, split: data.Split, placement: NamedSharding, multiple: int = 1) -> DeviceSplit:
        pad = -len(split) % multiple
        images = np.pad(split.images_NHW, ((0, pad), (0, 0), (0, 0)))
        labels = np.pad(split.labels_N, (0, pad))
        return cls(sharding.put(images, placement), sharding.put(labels, placement), len(split))


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
    def images_per_second(self) -> float:
        return self.train_images * len(self.epochs) / self.train_seconds


class Trainer:
    """A model, its optimiser and the compiled programs that train and evaluate it.

    Construction builds the model and compiles everything (timed as `compile_seconds`), so that
    `train_epoch` and `evaluate` measure steady-state work only.
    """

    def __init__(self, config: Config, train: data.Split, eval_splits: Sequence[data.Split]):
        self.config = config
        b = config.batch_size
        self.n_train = len(train)
        self.full_steps, tail = divmod(self.n_train, b)
        self.steps_per_epoch = epoch_steps(self.n_train, b)
        train_graphdef, eval_graphdef, state, self.params = init_run(config, self.steps_per_epoch)
        augment_key = seed_streams(config.seed)[3]

        mesh = sharding.make_mesh(config.devices)
        sharding.check_batches(mesh, **{"batch size": b, "last batch": tail or b})
        self.replicated = sharding.replicated(mesh)
        self.state = sharding.put(state, self.replicated)
        self.train = DeviceSplit.put(train, self.replicated)
        # A whole number of images per device, as evaluation batches are split like training ones.
        eval_batch = -(-min(EVAL_BATCH, max(len(s) for s in eval_splits)) // mesh.size) * mesh.size
        self.eval_splits = [DeviceSplit.put(s, self.replicated, eval_batch) for s in eval_splits]

        start = time.perf_counter()
        norm = dict(mean=config.mean, std=config.std, split=sharding.batch_split(mesh))
        augment = dict(augmentation=augmentation(config), augment_key=augment_key,
                       label_smoothing=config.label_smoothing)
        order = self._shuffle(0)
        step_args = (self.state, jnp.zeros(3), self.train.images_NHW, self.train.labels_N, order, np.int32(0))
        self._chunk = self._compile(train_steps, train_graphdef, (*step_args, np.int32(1)), donate=(0, 1),
                                    batch_size=b, **norm, **augment)
        self._tail = tail and self._compile(train_step, train_graphdef, step_args, donate=(0, 1), batch_size=tail,
                                            **norm, **augment)
        images = self.eval_splits[0].images_NHW[:eval_batch]
        labels = self.eval_splits[0].labels_N[:eval_batch]
        self._eval = self._compile(eval_step, eval_graphdef, (self.state, images, labels, np.int32(0)), **norm)
        self.compile_seconds = time.perf_counter() - start
        self.eval_batch = eval_batch

    @staticmethod
    def _compile(fn: Callable, graphdef, args: tuple, donate: tuple[int, ...] = (), **static):
        """`fn` compiled for `args`, with `static` bound as constants of the program."""
        return jax.jit(functools.partial(fn, graphdef, **static), donate_argnums=donate).lower(*args).compile()

    def _shuffle(self, epoch: int) -> jax.Array:
        return sharding.put(epoch_order(self.config.seed, epoch, self.n_train), self.replicated)

    def train_epoch(self, epoch: int,
                    progress: Callable[[int, jax.Array], None] | None = None) -> tuple[float, float, float]:
        """Trains one epoch; returns (mean loss, accuracy, seconds) over its batches."""
        start = time.perf_counter()
        order = self._shuffle(epoch)
        metrics = jnp.zeros(3)
        data_args = (self.train.images_NHW, self.train.labels_N, order)
        for first in range(0, self.full_steps, PROGRESS_EVERY):
            last = min(first + PROGRESS_EVERY, self.full_steps)
            self.state, metrics = self._chunk(self.state, metrics, *data_args, np.int32(first), np.int32(last))
            if progress is not None:
                progress(last, metrics)
        if self._tail:
            b = self.config.batch_size
            self.state, metrics = self._tail(self.state, metrics, *data_args, np.int32(self.full_steps * b))
            if progress is not None:
                progress(self.steps_per_epoch, metrics)
        loss_sum, correct, n = jax.device_get(metrics)
        seconds = time.perf_counter() - start
        return float(loss_sum / n), float(correct / n), seconds

    def evaluate(self, split: DeviceSplit) -> float:
        """Accuracy on `split` with BatchNorm's running statistics and no dropout."""
        correct = sum(
            self._eval(self.state, split.images_NHW[i: i + self.eval_batch], split.labels_N[i: i + self.eval_batch],
                       np.int32(min(self.eval_batch, split.n - i)))
            for i in range(0, split.n, self.eval_batch))
        return float(correct) / split.n


def init_run(config: Config, steps_per_epoch: int):
    """Run `config.seed`'s model and optimiser as (train graphdef, eval graphdef, state, parameters)."""
    params_key, dropout_key, _, _ = seed_streams(config.seed)
    model = build(config.arch, dropout=config.dropout, rngs=nnx.Rngs(params=params_key, dropout=dropout_key))
    optimizer = nnx.Optimizer(model, make_optimizer(config, steps_per_epoch), wrt=nnx.Param)
    model.eval()
    eval_graphdef, _ = nnx.split((model, optimizer))
    model.train()
    train_graphdef, state = nnx.split((model, optimizer))
    return train_graphdef, eval_graphdef, state, count_params(model)


def epoch_steps(n_train: int, batch_size: int) -> int:
    """Steps in an epoch: like PyTorch's DataLoader (drop_last=False), a smaller last batch counts."""
    return -(-n_train // batch_size)


def augmentation(config: Config) -> Augmentation:
    return Augmentation(degrees=config.rotate, translate=config.translate, scale=config.scale, crop_p=config.crop_p,
                        crop_size=config.crop_size)


def seed_streams(seed: int) -> jax.Array:
    """Independent keys for parameter initialisation, dropout, shuffling and augmentation."""
    return jax.random.split(jax.random.key(seed), 4)


@functools.partial(jax.jit, static_argnums=(0, 2))
def epoch_order(seed: int, epoch: int, n: int) -> jax.Array:
    """The order in which epoch `epoch` of run `seed` visits the `n` training images."""
    return jax.random.permutation(jax.random.fold_in(seed_streams(seed)[2], epoch), n)


def fit(config: Config, dataset: data.Dataset | None = None, *, progress: bool = True) -> Result:
    """Trains `config` and evaluates after every epoch.

    Args:
        config: the run; validated here.
        dataset: already loaded data (else loaded as `config` says).
        progress: draw a progress bar with running loss and accuracy on stderr (process 0 only).

    Raises:
        JaxMnistError: for an invalid configuration or unusable data.
    """
    config.validate()
    distributed.initialize(config.distributed)
    if dataset is None:
        dataset = data.load(config.dataset, config.data_dir, verify_checksums=config.verify_checksums)
    config.validate_sizes(len(dataset.train))
    train, val = data.split_train_val(dataset.train, config.val_size, config.seed)
    if config.train_size is not None:
        train = train.take(np.arange(config.train_size))
    eval_splits = [dataset.test] if val is None else [dataset.test, val]
    trainer = Trainer(config, train, eval_splits)

    epochs = []
    for epoch in range(config.epochs):
        bar = (_progress_bar(trainer.steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}")
               if progress and distributed.is_main_process() else None)
        loss, accuracy, seconds = trainer.train_epoch(epoch, bar and functools.partial(_redraw, bar))
        start = time.perf_counter()
        test_accuracy = trainer.evaluate(trainer.eval_splits[0])
        val_accuracy = trainer.evaluate(trainer.eval_splits[1]) if val is not None else None
        eval_seconds = time.perf_counter() - start
        epochs.append(EpochResult(epoch + 1, loss, accuracy, val_accuracy, test_accuracy, seconds, eval_seconds))
        if bar is not None:
            val_text = "" if val_accuracy is None else f" val_acc={val_accuracy:.4f}"
            bar.set_postfix_str(f"loss={loss:.4f} acc={accuracy:.4f}{val_text} test_acc={test_accuracy:.4f}")
            bar.close()
    return Result(config, trainer.params, trainer.n_train, tuple(epochs), trainer.compile_seconds)


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)


def _redraw(bar, steps_done: int, metrics: jax.Array) -> None:
    loss_sum, correct, n = jax.device_get(metrics)
    bar.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{correct / n:.4f}", refresh=False)
    bar.update(steps_done - bar.n)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jaxmnist.train`: parse flags, train, print the summary (and write JSON)."""
    from jaxmnist import cli, report
    from jaxmnist.errors import JaxMnistError

    args, config = cli.parse(argv)
    try:
        result = fit(config, progress=not args.no_progress)
    except JaxMnistError as e:
        print(f"jaxmnist: error: {e}", file=sys.stderr)
        return 2
    if not distributed.is_main_process():
        return 0
    summary = report.summary(result)
    print(report.format_summary(summary))
    if args.json:
        report.write_json(summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
