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
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding

from jaxmnist import data, distributed, report, sharding
from jaxmnist.augment import Augmentation
from jaxmnist.checkpoint import SUMMARY_FILE, MetricsLog, Position, RunDir, write_json
from jaxmnist.config import Config
from jaxmnist.errors import Diverged, Interrupted, JaxMnistError
from jaxmnist.models import build, count_params
from jaxmnist.optim import averaged_params, make_optimizer, make_schedule
from jaxmnist.results import EpochResult, Result
from jaxmnist.tensorboard import TensorBoardLog

EVAL_BATCH = 100  # images per evaluation step: small enough for the activations to stay in cache
PROGRESS_EVERY = 50  # steps per compiled chunk; the progress bar redraws (and syncs) between chunks
# A chunk's mean loss above this, or a non-finite one, stops the run as diverged: guessing uniformly
# among 10 classes costs 2.3, so no run that learns comes near it, and one that blew up (--lr 1e6
# reaches ~1e13 while its accuracy sits at chance) is caught before it reports a meaningless score.
DIVERGED_LOSS = 1_000.0


NO_AUGMENTATION = Augmentation()


def to_unit(images_BHW: jax.Array) -> jax.Array:
    """uint8 pixels to float32 in [0, 1], PyTorch's ToTensor."""
    return images_BHW.astype(jnp.float32) / 255.0


def normalize(pixels_BHW: jax.Array, mean: float, std: float) -> jax.Array:
    """[0, 1] pixels to the standardised `x_BHWC` the models take, PyTorch's Normalize."""
    return ((pixels_BHW - mean) / std)[..., None]


def loss_fn(model: nnx.Module, x_BHWC: jax.Array, labels_B: jax.Array,
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


def eval_state(graphdef, state):
    """The state to evaluate: the weights replaced by their running average where the recipe keeps
    one (`--ema`), else `state` as it is."""
    model, optimizer = nnx.merge(graphdef, state)
    if (average := averaged_params(optimizer.opt_state)) is None:
        return state
    nnx.update(model, average)
    return nnx.state((model, optimizer))


def logits_step(graphdef, state, images_EHW, *, mean: float, std: float, split: NamedSharding) -> jax.Array:
    """The logits of an evaluation batch, with BatchNorm's running statistics and no dropout."""
    model, _ = nnx.merge(graphdef, state)
    images_EHW = jax.lax.with_sharding_constraint(images_EHW, split)
    return model(normalize(to_unit(images_EHW), mean, std))


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
    """A split on the device (with a leading run axis where the arrays have one)."""

    images_NHW: jax.Array
    labels_N: jax.Array

    @classmethod
    def put(cls, split: data.Split, placement: NamedSharding) -> DeviceSplit:
        return cls(sharding.put(split.images_NHW, placement), sharding.put(split.labels_N, placement))


@dataclasses.dataclass(frozen=True)
class EvalSplit:
    """A split on the device as `Evaluator.put` lays it out: blocks of the evaluator's block size,
    the last padded; the first `n` images are real and `labels_N` are theirs (on the host)."""

    blocks: tuple[jax.Array, ...]
    labels_N: np.ndarray
    n: int


class Evaluator:
    """The compiled inference program: the logits of one block of images, computed in batches of
    `batch` one after another (`lax.map`); a split runs as one dispatch per block.

    One program serves every split size in `sizes`: its block is the largest whole number of
    batches that divides each size rounded up to whole batches (gap's 10,000 test and 6,000
    validation images: blocks of 2,000). A program per size cost a warm start ~0.2 s each to trace
    and load. Small batches keep the activations in cache: gap's 10,000 test images took 0.67 s in
    batches of 100 against 1.48 s in a Python loop over batches of 2,000, with the same logits to
    the bit (a busy 2-core Intel Xeon; benchmarks/endtoend.py times it in whole runs). Training and
    `jaxmnist.evaluate` share it, so that both report the same accuracy to the last digit. With
    `runs`, the state and the split's images have a leading run axis (`jax.vmap`).
    """

    def __init__(self, config: Config, eval_graphdef, state, mesh: jax.sharding.Mesh, batch: int,
                 sizes: Sequence[int], runs: int = 0):
        self.batch, self.runs = batch, runs
        self.block = batch * math.gcd(*(-(-n // batch) for n in sizes))
        self._placement = sharding.replicated(mesh)
        logits = functools.partial(logits_step, eval_graphdef, mean=config.mean, std=config.std,
                                   split=sharding.batch_split(mesh))

        def block_logits(state, images_NHW):
            state = eval_state(eval_graphdef, state)  # once, outside the loop over batches
            batches = images_NHW.reshape(-1, batch, *images_NHW.shape[1:])
            return jax.lax.map(lambda x: logits(state, x), batches).reshape(images_NHW.shape[0], -1)

        # Replicated logits: every process of a multi-host run reads them whole.
        program = jax.jit(jax.vmap(block_logits) if runs else block_logits, out_shardings=self._placement)
        images = sharding.put(np.zeros(((runs,) if runs else ()) + (self.block, 28, 28), np.uint8), self._placement)
        self._program = program.lower(state, images).compile()

    def put(self, split: data.Split) -> EvalSplit:
        """`split` on the device in blocks (images with a leading run axis, with runs)."""
        n = split.labels_N.shape[-1]
        runs = [(0, 0)] * (split.labels_N.ndim - 1)
        images = np.pad(split.images_NHW, (*runs, (0, -n % self.block), (0, 0), (0, 0)))
        blocks = tuple(sharding.put(images[..., i: i + self.block, :, :], self._placement)
                       for i in range(0, images.shape[-3], self.block))
        return EvalSplit(blocks, np.asarray(split.labels_N), n)

    def logits(self, state, split: EvalSplit) -> np.ndarray:
        """([runs,] n, classes) logits of the split's `n` real images."""
        # One block in flight at a time: two processes of a multi-host CPU run deadlocked in their
        # collectives with several queued.
        blocks = [np.asarray(jax.device_get(self._program(state, images))) for images in split.blocks]
        return np.concatenate(blocks, axis=-2)[..., : split.n, :]

    def accuracy(self, state, split: EvalSplit) -> float | np.ndarray:
        """The accuracy on `split` (one per run, with runs)."""
        correct = self.logits(state, split).argmax(-1) == split.labels_N
        return correct.mean(-1) if self.runs else float(np.mean(correct))


class Trainer:
    """A model, its optimiser and the compiled programs that train and evaluate it; or several seeds
    of them side by side.

    The training images stay on the device once (`pool`); each epoch visits this run's training
    indices `train_idx` in a seeded order. With `seeds`, every seed's model and optimiser state,
    running metrics, image order, augmentation key and validation images gain a leading run axis
    and the programs are `jax.vmap`ped over it (the pool and the test images are shared): the
    same chunks, the same epoch loop, for one run or many. Construction builds the models and
    compiles everything (timed as `compile_seconds`), so that the epochs measure steady-state work.
    """

    def __init__(self, config: Config, pool: data.Split, test: data.Split, seeds: Sequence[int] | None = None):
        start = time.perf_counter()
        self.config, self.seeds = config, list(seeds) if seeds is not None else None
        runs = len(self.seeds) if self.seeds is not None else 0
        every_seed = self.seeds or [config.seed]
        splits = [train_val_indices(config, len(pool), seed) for seed in every_seed]
        self.train_idx = np.stack([t for t, _ in splits]) if runs else splits[0][0]
        b = config.batch_size
        self.n_train = self.train_idx.shape[-1]
        self.full_steps, tail = divmod(self.n_train, b)
        self.steps_per_epoch = epoch_steps(self.n_train, b)
        inits = [init_run(dataclasses.replace(config, seed=seed), self.steps_per_epoch) for seed in every_seed]
        train_graphdef, eval_graphdef, _, self.params = inits[0]
        state = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(i[2] for i in inits)) if runs else inits[0][2]
        keys = [seed_streams(seed)[3] for seed in every_seed]

        mesh = sharding.make_mesh(1 if runs else config.devices)
        sharding.check_batches(mesh, **{"batch size": b, "last batch": tail or b})
        self.replicated = sharding.replicated(mesh)
        self.state = sharding.put(state, self.replicated)
        self.train = DeviceSplit.put(pool, self.replicated)
        # Validation images differ per seed; the test images are every run's.
        vals = [(pool.images_NHW[v], pool.labels_N[v]) for _, v in splits if len(v)]
        eval_sets = [(test.images_NHW, test.labels_N)]
        if vals:
            eval_sets.append(tuple(np.stack(x) for x in zip(*vals)) if runs else vals[0])
        if runs:
            eval_sets[0] = tuple(np.broadcast_to(x, (runs, *x.shape)) for x in eval_sets[0])
        self.init_seconds = time.perf_counter() - start

        start = time.perf_counter()
        step_options = dict(mean=config.mean, std=config.std, split=sharding.batch_split(mesh),
                            augmentation=augmentation(config), label_smoothing=config.label_smoothing)
        self.augment_keys = sharding.put(jnp.stack(keys) if runs else keys[0], self.replicated)
        step_args = (self.state, self.zero_metrics(), self.train.images_NHW, self.train.labels_N,
                     self._shuffle(0), self.augment_keys, np.int32(0))
        programs = [_step_program(step, train_graphdef, side_by_side=bool(runs), batch_size=size, **step_options)
                    for step, size in ((train_steps, b), (train_step, tail))]
        self._chunk = jax.jit(programs[0], donate_argnums=(0, 1)).lower(*step_args, np.int32(1)).compile()
        self._tail = tail and jax.jit(programs[1], donate_argnums=(0, 1)).lower(*step_args).compile()
        sizes = [labels.shape[-1] for _, labels in eval_sets]
        self.evaluator = Evaluator(config, eval_graphdef, self.state, mesh, eval_batch_size(max(sizes), mesh.size),
                                   sizes, runs)
        self.eval_splits = [self.evaluator.put(data.Split(*x)) for x in eval_sets]
        self.compile_seconds = time.perf_counter() - start

    def _shuffle(self, epoch: int) -> jax.Array:
        """The pool indices epoch `epoch` visits, in order (per run, with seeds)."""
        seeds = self.seeds or [self.config.seed]
        orders = [np.asarray(epoch_order(seed, epoch, self.n_train)) for seed in seeds]
        order = np.stack([t[o] for t, o in zip(self.train_idx, orders)]) if self.seeds else self.train_idx[orders[0]]
        return sharding.put(order.astype(np.int32), self.replicated)

    def zero_metrics(self) -> jax.Array:
        """The running (sum of losses, correct predictions, images) of an epoch not yet begun."""
        return sharding.put(np.zeros(((len(self.seeds),) if self.seeds else ()) + (3,), np.float32), self.replicated)

    def chunks(self, epoch: int, start: int = 0, metrics: jax.Array | None = None,
               keep_last: bool = False) -> Iterator[tuple[int, jax.Array]]:
        """Trains epoch `epoch` from step `start` (a chunk boundary), one compiled chunk at a time,
        yielding (steps done in the epoch, running metrics) after each; `self.state` advances.

        With `keep_last`, `self.last` holds a copy of (state, metrics, steps done) from before the
        chunk just run (the state is donated to each chunk, so it would be gone otherwise).
        """
        order = self._shuffle(epoch)
        metrics = self.zero_metrics() if metrics is None else metrics
        data_args = (self.train.images_NHW, self.train.labels_N, order, self.augment_keys)
        b = self.config.batch_size
        bounds = [(first, min(first + PROGRESS_EVERY, self.full_steps))
                  for first in range(start, self.full_steps, PROGRESS_EVERY)]
        if self._tail and start <= self.full_steps:
            bounds.append((self.full_steps, self.steps_per_epoch))
        for first, last in bounds:
            if keep_last:
                self.last = (jax.tree.map(jnp.copy, self.state), jnp.copy(metrics), first)
            if last > self.full_steps:  # the smaller last batch: a program of its own
                self.state, metrics = self._tail(self.state, metrics, *data_args, np.int32(self.full_steps * b))
            else:
                self.state, metrics = self._chunk(self.state, metrics, *data_args, np.int32(first), np.int32(last))
            yield last, metrics

    def train_epoch(self, epoch: int) -> tuple[float, float, float]:
        """Trains one whole epoch; returns (mean loss, accuracy, seconds) over its batches (arrays
        with one value per run, with seeds)."""
        start = time.perf_counter()
        *_, (_, metrics) = self.chunks(epoch)
        loss_sum, correct, n = np.moveaxis(np.asarray(jax.device_get(metrics), np.float64), -1, 0)
        if self.seeds is None:
            loss_sum, correct, n = float(loss_sum), float(correct), float(n)
        return loss_sum / n, correct / n, time.perf_counter() - start

    def evaluate(self, split: EvalSplit) -> float | np.ndarray:
        """Accuracy on `split` with BatchNorm's running statistics and no dropout (one per run, with seeds)."""
        return self.evaluator.accuracy(self.state, split)

    def checkpoint_arrays(self, metrics: jax.Array) -> dict:
        return {"state": self.state, "metrics": metrics}


def _step_program(step: Callable, graphdef, *, side_by_side: bool, batch_size: int, **step_options) -> Callable:
    """`step` as a function of (state, metrics, images, labels, order, augmentation key, *step bounds).

    The key is an argument, not a constant of the program, so that every seed runs the same
    program and a warm compilation cache serves them all. `side_by_side`: for every run at once,
    `jax.vmap` over the state, metrics, order and key (one per run); the images and bounds are shared.
    """
    def one(state, metrics, images, labels, order, key, *bounds):
        return step(graphdef, state, metrics, images, labels, order, *bounds, batch_size=batch_size,
                    augment_key=key, **step_options)

    def every_run(state, metrics, images, labels, order, keys, *bounds):
        def per_run(state, metrics, order, key):
            return one(state, metrics, images, labels, order, key, *bounds)
        return jax.vmap(per_run)(state, metrics, order, keys)

    program = every_run if side_by_side else one
    program.__name__ = step.__name__  # JAX names the compiled program (profiles, cache files) after it
    return program


def train_val_indices(config: Config, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Run `seed`'s training and held-out image indices among `n` (`train_size` applied)."""
    if config.val_size:
        train_idx, val_idx = data.train_val_indices(n, config.val_size, seed)
    else:
        train_idx, val_idx = np.arange(n), np.arange(0)
    return train_idx[: config.train_size], val_idx


def init_run(config: Config, steps_per_epoch: int):
    """Run `config.seed`'s model and optimiser as (train graphdef, eval graphdef, state, parameters)."""
    model, optimizer = _new_run(dataclasses.replace(config, seed=0), steps_per_epoch, np.uint32(config.seed))
    model.eval()
    eval_graphdef, _ = nnx.split((model, optimizer))
    model.train()
    train_graphdef, state = nnx.split((model, optimizer))
    return train_graphdef, eval_graphdef, state, count_params(model)


@functools.partial(nnx.jit, static_argnums=(0, 1))
def _new_run(config: Config, steps_per_epoch: int, seed: jax.Array) -> tuple[nnx.Module, nnx.Optimizer]:
    """`seed`'s model and optimiser, built by one compiled program (the seed is an argument, so every
    seed shares it and the compilation cache keeps it). Built op by op, they took ~26 small programs
    compiled anew in every process: 0.8 s of a warm start of `gap` (benchmarks/endtoend.py)."""
    params_key, dropout_key, _, _ = seed_streams(seed)
    model = build(config.arch, dropout=config.dropout, rngs=nnx.Rngs(params=params_key, dropout=dropout_key))
    return model, nnx.Optimizer(model, make_optimizer(config, steps_per_epoch), wrt=nnx.Param)


def eval_batch_size(largest_split: int, devices: int) -> int:
    """Images per evaluation batch: at most EVAL_BATCH, and a whole number per device, as
    evaluation batches are split like training ones."""
    return -(-min(EVAL_BATCH, largest_split) // devices) * devices


def epoch_steps(n_train: int, batch_size: int) -> int:
    """Steps in an epoch: like PyTorch's DataLoader (drop_last=False), a smaller last batch counts."""
    return -(-n_train // batch_size)


def augmentation(config: Config) -> Augmentation:
    return Augmentation(degrees=config.rotate, translate=config.translate, scale=config.scale, crop_p=config.crop_p,
                        crop_size=config.crop_size)


def seed_streams(seed: int) -> jax.Array:
    """Independent keys for parameter initialisation, dropout, shuffling and augmentation."""
    return jax.random.split(jax.random.key(seed), 4)


def epoch_order(seed: int, epoch: int, n: int) -> jax.Array:
    """The order in which epoch `epoch` of run `seed` visits the `n` training images."""
    return _epoch_order(np.uint32(seed), epoch, n)


@functools.partial(jax.jit, static_argnums=2)
def _epoch_order(seed: jax.Array, epoch: jax.Array, n: int) -> jax.Array:  # one program for every seed and epoch
    return jax.random.permutation(jax.random.fold_in(seed_streams(seed)[2], epoch), n)


def fit(config: Config, dataset: data.Dataset | None = None, *, progress: bool = True, run_dir: RunDir | None = None,
        resume: bool = False, metrics_path: str | Path | None = None, tensorboard_dir: str | Path | None = None,
        should_stop: Callable[[], bool] = lambda: False) -> Result:
    """Trains `config` and evaluates after every epoch.

    Args:
        config: the run; validated here.
        dataset: already loaded data (else loaded as `config` says).
        progress: draw a progress bar with running loss and accuracy on stderr (process 0 only).
        run_dir: checkpoint after every epoch (and when stopped) into this run folder (the caller closes it).
        resume: continue from `run_dir`'s newest intact checkpoint, whose configuration `config` must be
            (from the beginning when none is intact; damaged ones are moved aside, and each is named).
        metrics_path: write the metrics log here (JSON lines).
        tensorboard_dir: write the metrics log's scalars here too, as TensorBoard event files (the
            tensorboard extra).
        should_stop: polled between chunks of steps; when true, the run checkpoints and stops.

    Raises:
        JaxMnistError: for an invalid configuration or unusable data.
        Diverged: the loss became non-finite (the last finite state is checkpointed, given a run folder).
        Interrupted: `should_stop` said so.
    """
    config.validate()
    distributed.initialize(config.distributed)
    start = time.perf_counter()
    if dataset is None:
        dataset = data.load(config.dataset, config.data_dir, verify_checksums=config.verify_checksums)
    config.validate_sizes(len(dataset.train))
    data_seconds = time.perf_counter() - start
    trainer = Trainer(config, dataset.train, dataset.test)
    result = _Run(trainer, config, run_dir, resume, metrics_path, tensorboard_dir, progress, should_stop).train()
    return dataclasses.replace(result, data_seconds=data_seconds, init_seconds=trainer.init_seconds)


class _Run:
    """The epochs of one `fit`: progress, metrics log, checkpoints, the divergence guard and stopping."""

    def __init__(self, trainer: Trainer, config: Config, run_dir: RunDir | None, resume: bool,
                 metrics_path: str | Path | None, tensorboard_dir: str | Path | None, progress: bool,
                 should_stop: Callable[[], bool]):
        self.trainer, self.config, self.run_dir, self.should_stop = trainer, config, run_dir, should_stop
        self.main = distributed.is_main_process()
        self.progress = progress and self.main
        self.position, self.metrics = Position(), trainer.zero_metrics()
        resumed = resume and self._resume()
        if run_dir is not None:
            run_dir.start(config)
        self.schedule = make_schedule(config, trainer.steps_per_epoch)
        # Each gets every record. `train` closes them however the run ends: the event writer buffers.
        self.sinks: list[MetricsLog | TensorBoardLog] = []
        if self.main and metrics_path:
            self.sinks.append(MetricsLog(metrics_path, self.global_step() if resumed else None))
        if self.main and tensorboard_dir:
            self.sinks.append(TensorBoardLog(tensorboard_dir, self.global_step() if resumed else None))
        self.started = time.perf_counter()

    def _resume(self) -> bool:
        """Continues from the run folder's newest intact checkpoint, saying which (and which damaged
        ones it passed over); False when there is none, and the run starts from the beginning."""
        run_dir, say = self.run_dir, self._say
        saved, arrays, skipped = run_dir.newest_intact(self.trainer.checkpoint_arrays(self.metrics))
        for s in skipped:
            say(f"checkpoint {s.global_step} in {run_dir.path} is damaged ({s.problem}): passed over, and moved to "
                f"{s.moved_to}.")
        if saved is None:
            say(f"{run_dir.path} keeps this run but no intact checkpoint of it: starting it from the beginning.")
            return False
        self.trainer.state, self.metrics, self.position = arrays["state"], arrays["metrics"], saved.position
        done = "all its epochs done" if saved.position.epoch == self.config.epochs else \
            f"epoch {saved.position.epoch + 1}, step {saved.position.step}"
        say(f"continuing the run in {run_dir.path} from checkpoint {saved.global_step} ({done}).")
        return True

    def _say(self, line: str) -> None:
        if self.main:
            print(f"jaxmnist: {line}", file=sys.stderr)

    def global_step(self) -> int:
        return self.position.epoch * self.trainer.steps_per_epoch + self.position.step

    def train(self) -> Result:
        try:
            return self._train()
        finally:
            for sink in self.sinks:
                sink.close()

    def _train(self) -> Result:
        trainer, config = self.trainer, self.config
        if self.should_stop():
            raise Interrupted("stopped before the first step: nothing was trained")
        for epoch in range(self.position.epoch, config.epochs):
            bar = _progress_bar(trainer.steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", self.position.step) \
                if self.progress else None
            loss, accuracy, seconds = self._train_epoch(epoch, bar)
            start = time.perf_counter()
            test_accuracy = trainer.evaluate(trainer.eval_splits[0])
            val_accuracy = trainer.evaluate(trainer.eval_splits[1]) if len(trainer.eval_splits) > 1 else None
            result = EpochResult(epoch + 1, loss, accuracy, val_accuracy, test_accuracy, seconds,
                                 time.perf_counter() - start)
            self.position = Position(epoch + 1, 0, (*self.position.epochs, result))
            self.metrics = trainer.zero_metrics()
            self._save()
            self._log(epoch=epoch + 1, step=self.global_step(), train_loss=loss, train_accuracy=accuracy,
                      val_accuracy=val_accuracy, test_accuracy=test_accuracy)
            if bar is not None:
                val_text = "" if val_accuracy is None else f" val_acc={val_accuracy:.4f}"
                bar.set_postfix_str(f"loss={loss:.4f} acc={accuracy:.4f}{val_text} test_acc={test_accuracy:.4f}")
                bar.close()
            if epoch + 1 < config.epochs and self.should_stop():
                raise Interrupted(self._stopped_text())
        return Result(config, trainer.params, trainer.n_train, self.position.epochs, trainer.compile_seconds)

    def _train_epoch(self, epoch: int, bar) -> tuple[float, float, float]:
        trainer = self.trainer
        start, done_before = time.perf_counter(), self.position.train_seconds
        logged = (self.position.step, *(float(x) for x in jax.device_get(self.metrics)))
        checked = logged
        for steps, metrics in trainer.chunks(epoch, self.position.step, self.metrics, keep_last=bool(self.run_dir)):
            loss_sum, correct, n = (float(x) for x in jax.device_get(metrics))
            chunk_loss = (loss_sum - checked[1]) / (n - checked[3])
            if not chunk_loss <= DIVERGED_LOSS:  # NaN too
                self._diverged(epoch, steps, chunk_loss)
            checked = (steps, loss_sum, correct, n)
            self.metrics = metrics
            self.position = dataclasses.replace(self.position, step=steps,
                                                train_seconds=done_before + time.perf_counter() - start)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{correct / n:.4f}", refresh=False)
                bar.update(steps - bar.n)
            # The epoch's smaller last batch is one step of its own program: logged alone, its handful of
            # images would plot as a point of its own (noise), so it joins the chunk before it, and the
            # run stops only after it.
            if steps == trainer.full_steps < trainer.steps_per_epoch:
                continue
            if self.sinks:  # the schedule runs op by op: a few compilations a run without a log skips
                images = n - logged[3]
                self._log(epoch=epoch + 1, step=self.global_step(), loss=(loss_sum - logged[1]) / images,
                          accuracy=(correct - logged[2]) / images, lr=float(self.schedule(self.global_step() - 1)),
                          seconds=time.perf_counter() - self.started)
            logged = checked
            if steps < trainer.steps_per_epoch and self.should_stop():
                self._save()
                raise Interrupted(self._stopped_text())
        loss_sum, correct, n = checked[1:]
        return loss_sum / n, correct / n, self.position.train_seconds

    def _diverged(self, epoch: int, steps: int, loss: float) -> None:
        first = self.trainer.last[2] if self.run_dir else self.position.step
        where = f"steps {first + 1}-{steps} of epoch {epoch + 1}"
        saved = ""
        if self.run_dir is not None:
            state, self.metrics, step = self.trainer.last
            self.trainer.state, self.position = state, dataclasses.replace(self.position, step=step)
            self._save()
            saved = (f" The last finite state (step {step} of epoch {epoch + 1}) is checkpointed in "
                     f"{self.run_dir.path}; a resumed run would diverge again, so start anew with the lower rate.")
        raise Diverged(f"Training diverged: the mean loss over {where} was {loss:.3g} (over {DIVERGED_LOSS:g}, or "
                       f"not finite; learning rate {self.config.lr:g}). Lower it, e.g. --lr {self.config.lr / 10:g}, "
                       f"or check that the normalisation (--mean, --std) suits the data.{saved}")

    def _save(self) -> None:
        if self.run_dir is not None:
            self.run_dir.save(self.global_step(), self.config, self.position,
                              self.trainer.checkpoint_arrays(self.metrics))

    def _log(self, **record) -> None:
        for sink in self.sinks:
            sink.write(**record)

    def _stopped_text(self) -> str:
        where = f"after step {self.position.step} of epoch {self.position.epoch + 1}" if self.position.step else \
            f"after epoch {self.position.epoch}"
        if self.run_dir is None:
            return f"stopped {where}; nothing was saved (train with --checkpoint-dir DIR to keep progress)."
        return (f"stopped {where}; checkpoint saved in {self.run_dir.path}: resume with "
                f"`python -m jaxmnist.train --resume --checkpoint-dir {self.run_dir.path}`")


def _progress_bar(total: int, desc: str, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)


class _StopRequests:
    """Ctrl-C and SIGTERM ask the run to stop at the next chunk boundary; a second one stops it at once."""

    def __init__(self):
        self.signal: int | None = None

    def __call__(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\njaxmnist: {signal.Signals(signum).name}: stopping after the current chunk of steps "
              "(send it again to stop at once)", file=sys.stderr)

    def requested(self) -> bool:
        return self.signal is not None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jaxmnist.train`: parse flags, train, print the summary (and write JSON, a plot).

    Exit status: 0 done; 2 bad input; 3 diverged; 130 / 143 stopped by SIGINT / SIGTERM.
    """
    from jaxmnist import cache, cli

    imports_seconds = report.process_seconds()
    args, config = cli.parse(argv)
    stop = _StopRequests()
    handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    run_dir = None
    try:
        cli.check_outputs(args)
        config.validate()  # before the run folder is touched
        cache.enable(args.cache_dir)
        resume = False
        if args.checkpoint_dir:
            distributed.initialize(config.distributed)  # the lock is the main process's, so this comes first
            run_dir = RunDir(args.checkpoint_dir, args.keep)
            if took_over := run_dir.lock():
                print(f"jaxmnist: {took_over}.", file=sys.stderr)
            config, resume = cli.run_config(args, config, run_dir)
        result = fit(config, progress=not args.no_progress, run_dir=run_dir, resume=resume,
                     metrics_path=cli.metrics_path(args), tensorboard_dir=args.tensorboard, should_stop=stop.requested)
    except Diverged as e:
        print(f"jaxmnist: error: {e}", file=sys.stderr)
        return 3
    except JaxMnistError as e:
        print(f"jaxmnist: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"jaxmnist: {e}", file=sys.stderr)
        return 128 + stop.signal
    except KeyboardInterrupt:
        print("jaxmnist: stopped at once; anything after the last checkpoint is lost.", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        if run_dir is not None:
            run_dir.close()
    if not distributed.is_main_process():
        return 0
    summary = report.summary(result)
    summary["phases"] = {"imports": imports_seconds, **summary["phases"]}
    summary["wall_seconds"] = report.process_seconds()
    print(report.format_summary(summary))
    for path in (args.json, run_dir and run_dir.file(SUMMARY_FILE)):
        if path:
            write_json(path, summary)
    if args.plot:
        from jaxmnist import plot

        plot.learning_curves(cli.metrics_path(args), args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
