"""The programs placed on this process's devices and run: the training state, the images, and
one compiled chunk of steps after another.

`jaxmnist.programs` builds and lowers the programs for a mesh; here the mesh is local
(`jaxmnist.sharding`), the state and the dataset are put on it, and the compiled programs run. The
state is donated to each chunk; nothing crosses to the host but a 3-number metrics vector when
the epoch loop (`jaxmnist.loop`) asks for it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from jaxmnist import data, platforms, programs, sharding
from jaxmnist.config import Config

PROGRESS_EVERY = 50  # steps per compiled chunk; the progress bar redraws (and syncs) between chunks


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
    """The compiled inference program (`programs.evaluation_program`) for splits of `sizes` images,
    on the devices of `mesh`: a split runs as one dispatch per block of images.

    Training and `jaxmnist.evaluate` share it, so that both report the same accuracy to the last
    digit. With `runs`, the state and the split's images have a leading run axis (`jax.vmap`).
    """

    def __init__(self, config: Config, eval_graphdef, state, mesh: jax.sharding.Mesh, sizes: Sequence[int],
                 runs: int = 0):
        self.runs = runs
        batch, self.block = programs.eval_blocks(sizes, mesh.size)
        self._placement = sharding.replicated(mesh)
        self._program = programs.evaluation_program(config, eval_graphdef, state, mesh, batch=batch, block=self.block,
                                                    runs=runs).compile()

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
        splits = [programs.train_val_indices(config, len(pool), seed) for seed in every_seed]
        self.train_idx = np.stack([t for t, _ in splits]) if runs else splits[0][0]
        b = config.batch_size
        self.n_train = self.train_idx.shape[-1]
        self.full_steps = self.n_train // b
        self.steps_per_epoch = programs.epoch_steps(self.n_train, b)
        mesh = sharding.make_mesh(1 if runs else config.devices)
        inits = [programs.init_run(dataclasses.replace(config, seed=seed), self.steps_per_epoch, platforms.of(mesh))
                 for seed in every_seed]
        train_graphdef, eval_graphdef, _, self.params = inits[0]
        state = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(i[2] for i in inits)) if runs else inits[0][2]
        keys = [programs.seed_streams(seed)[3] for seed in every_seed]

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
        self.augment_keys = sharding.put(jnp.stack(keys) if runs else keys[0], self.replicated)
        self.init_seconds = time.perf_counter() - start

        start = time.perf_counter()
        lowered = programs.training_programs(config, train_graphdef, state, mesh, pool=len(pool), train=self.n_train,
                                             runs=runs)
        self._chunk = lowered["chunk"].compile()
        self._tail = "tail" in lowered and lowered["tail"].compile()
        sizes = [labels.shape[-1] for _, labels in eval_sets]
        self.evaluator = Evaluator(config, eval_graphdef, self.state, mesh, sizes, runs)
        self.eval_splits = [self.evaluator.put(data.Split(*x)) for x in eval_sets]
        self.compile_seconds = time.perf_counter() - start

    def _shuffle(self, epoch: int) -> jax.Array:
        """The pool indices epoch `epoch` visits, in order (per run, with seeds)."""
        seeds = self.seeds or [self.config.seed]
        orders = [np.asarray(programs.epoch_order(seed, epoch, self.n_train)) for seed in seeds]
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
