"""Several seeds of one recipe trained side by side, in one compiled program.

`fit_seeds(config, seeds)` computes what `fit(replace(config, seed=s))` computes for each seed
(the same initial weights, dropout masks, train/validation split, image order and augmentation,
up to float summation order) with `jax.vmap` over the runs: each run's state gets a leading seed
axis, and the data is shared, so one program step advances every run by one step. On an
accelerator that fills a device the size of one tiny model leaves mostly idle; on two CPU cores
the convolutions are already compute-bound and the gain is small or negative
(benchmarks/accuracy.py --vmap measures it).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import data, sharding, train
from jaxmnist.config import Config


@dataclasses.dataclass(frozen=True)
class _Program:
    """The vmapped, compiled train chunk, tail step and evaluation."""

    chunk: jax.stages.Compiled
    tail: jax.stages.Compiled | None
    evaluate: jax.stages.Compiled
    eval_batch: int


def fit_seeds(config: Config, seeds: Sequence[int], dataset: data.Dataset | None = None) -> list[train.Result]:
    """Trains `config` once per seed, all runs side by side on one device; one `train.Result` per seed.

    Each result's `train_seconds` is the wall time of the joint epochs (all runs together) and
    its `compile_seconds` that of the joint program.
    """
    config.validate()
    if dataset is None:
        dataset = data.load(config.dataset, config.data_dir, verify_checksums=config.verify_checksums)
    config.validate_sizes(len(dataset.train))
    seeds = list(seeds)
    splits = [train_val_indices(config, len(dataset.train), seed) for seed in seeds]
    n_train, b = len(splits[0][0]), config.batch_size
    full_steps, tail = divmod(n_train, b)
    runs = [train.init_run(dataclasses.replace(config, seed=seed), train.epoch_steps(n_train, b)) for seed in seeds]
    train_graphdef, eval_graphdef, _, params = runs[0]
    mesh = sharding.make_mesh(1)
    device = sharding.replicated(mesh)
    state = sharding.put(jax.tree.map(lambda *leaves: jnp.stack(leaves), *(run[2] for run in runs)), device)
    images, labels = sharding.put(dataset.train.images_NHW, device), sharding.put(dataset.train.labels_N, device)
    keys = sharding.put(jnp.stack([train.seed_streams(seed)[3] for seed in seeds]), device)
    # Held-out images differ per seed, the test images do not: (seeds, images) and (images,) arrays.
    eval_sets = [(dataset.test.images_NHW, dataset.test.labels_N)]
    if config.val_size:
        eval_sets.append((np.stack([dataset.train.images_NHW[v] for _, v in splits]),
                          np.stack([dataset.train.labels_N[v] for _, v in splits])))

    def orders(epoch: int) -> jax.Array:
        return sharding.put(np.stack([t[np.asarray(train.epoch_order(s, epoch, n_train))] for s, (t, _) in
                                      zip(seeds, splits)]), device)

    start = time.perf_counter()
    program = _compile(config, train_graphdef, eval_graphdef, state, images, labels, orders(0), keys, tail, mesh)
    compile_seconds = time.perf_counter() - start

    per_seed = [[] for _ in seeds]
    for epoch in range(config.epochs):
        start = time.perf_counter()
        metrics, order = jnp.zeros((len(seeds), 3)), orders(epoch)
        for first in range(0, full_steps, train.PROGRESS_EVERY):
            state, metrics = program.chunk(state, metrics, images, labels, order, keys, np.int32(first),
                                           np.int32(min(first + train.PROGRESS_EVERY, full_steps)))
        if tail:
            state, metrics = program.tail(state, metrics, images, labels, order, keys, np.int32(full_steps * b))
        metrics = np.asarray(jax.device_get(metrics))
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        accuracies = [_evaluate(program, state, eval_images, eval_labels) for eval_images, eval_labels in eval_sets]
        eval_seconds = time.perf_counter() - start
        for i, (loss_sum, correct, n) in enumerate(metrics):
            val = float(accuracies[1][i]) if config.val_size else None
            per_seed[i].append(train.EpochResult(epoch + 1, float(loss_sum / n), float(correct / n), val,
                                           float(accuracies[0][i]), seconds, eval_seconds))
    return [train.Result(dataclasses.replace(config, seed=seed), params, n_train, tuple(epochs), compile_seconds)
            for seed, epochs in zip(seeds, per_seed)]


def train_val_indices(config: Config, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training and held-out image indices `fit` uses for `seed` (`train_size` applied)."""
    if config.val_size:
        train_idx, val_idx = data.train_val_indices(n, config.val_size, seed)
    else:
        train_idx, val_idx = np.arange(n), np.arange(0)
    return train_idx[: config.train_size], val_idx


def _compile(config, train_graphdef, eval_graphdef, state, images, labels, order, keys, tail, mesh) -> _Program:
    step_options = dict(mean=config.mean, std=config.std, split=sharding.batch_split(mesh),
                        augmentation=train.augmentation(config), label_smoothing=config.label_smoothing)

    def vmapped(step, batch_size):
        def run(state, metrics, images, labels, order, keys, *bounds):
            def one(state, metrics, order, key):
                return step(train_graphdef, state, metrics, images, labels, order, *bounds, batch_size=batch_size,
                            augment_key=key, **step_options)
            return jax.vmap(one)(state, metrics, order, keys)
        return jax.jit(run, donate_argnums=(0, 1))

    args = (state, jnp.zeros((len(keys), 3)), images, labels, order, keys, np.int32(0))
    chunk = vmapped(train.train_steps, config.batch_size).lower(*args, np.int32(1)).compile()
    tail_step = vmapped(train.train_step, tail).lower(*args).compile() if tail else None

    eval_batch = min(train.EVAL_BATCH, len(images))
    per_run = functools.partial(train.eval_step, eval_graphdef, mean=config.mean, std=config.std,
                                split=sharding.batch_split(mesh))
    evaluate = jax.jit(jax.vmap(per_run, in_axes=(0, 0, 0, None))).lower(
        state, jnp.zeros((len(keys), eval_batch, 28, 28), jnp.uint8), jnp.zeros((len(keys), eval_batch), jnp.int32),
        np.int32(0)).compile()
    return _Program(chunk, tail_step, evaluate, eval_batch)


def _evaluate(program: _Program, state, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each run's accuracy on `images` (shared: (N, H, W); per run: (runs, N, H, W))."""
    runs = jax.tree.leaves(state)[0].shape[0]
    if images.ndim == 3:
        images, labels = np.broadcast_to(images, (runs, *images.shape)), np.broadcast_to(labels, (runs, len(labels)))
    n, e = images.shape[1], program.eval_batch
    pad = -n % e
    images = np.pad(images, ((0, 0), (0, pad), (0, 0), (0, 0)))
    labels = np.pad(labels, ((0, 0), (0, pad)))
    correct = sum(program.evaluate(state, images[:, i: i + e], labels[:, i: i + e], np.int32(min(e, n - i)))
                  for i in range(0, n, e))
    return np.asarray(correct) / n
