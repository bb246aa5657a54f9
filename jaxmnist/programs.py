"""The compiled programs: pure functions of a Config, lowered for a mesh.

The training chunk (`train_steps`, a compiled loop of steps), the step that takes an epoch's
smaller last batch, and the evaluation of a block of images are built here from a Config, a mesh
and the sizes of the arrays they take, and lowered from abstract arrays (`jax.ShapeDtypeStruct`s
with their shardings): the same code lowers for this process's devices, which `jaxmnist.trainer` runs, and
for a TPU topology or a GPU that is not here, which `jaxmnist.compile` compiles and costs. The
forms that depend on the mesh's platform come from `jaxmnist.platforms`.

The whole dataset sits on the device as uint8 (`pool`); each step gathers its batch and
normalises it inside the program, and only a 3-number metrics vector leaves it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxmnist import data, platforms, sharding
from jaxmnist.augment import Augmentation
from jaxmnist.config import Config
from jaxmnist.models import build, count_params
from jaxmnist.optim import averaged_params, make_optimizer

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


def step_program(step: Callable, graphdef, *, side_by_side: bool, batch_size: int, **step_options) -> Callable:
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


def init_run(config: Config, steps_per_epoch: int, platform: str = platforms.CPU):
    """Run `config.seed`'s model and optimiser as (train graphdef, eval graphdef, state, parameters),
    its layers in the forms that suit `platform`."""
    model, optimizer = _new_run(dataclasses.replace(config, seed=0), steps_per_epoch, np.uint32(config.seed))
    platforms.adapt(model, platform)
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


def eval_blocks(sizes: Sequence[int], devices: int) -> tuple[int, int]:
    """(batch, block): evaluation runs splits of `sizes` images in blocks of `block` images, the last
    padded, one dispatch per block, each in batches of `batch` where the platform takes batches.

    The batch is at most EVAL_BATCH and a whole number per device, as evaluation batches are split
    like training ones. One program serves every split size: its block is the largest whole number
    of batches that divides each size rounded up to whole batches (gap's 10,000 test and 6,000
    validation images: blocks of 2,000). A program per size cost a warm start ~0.2 s each to trace
    and load.
    """
    batch = -(-min(platforms.EVAL_BATCH, max(sizes)) // devices) * devices
    return batch, batch * math.gcd(*(-(-n // batch) for n in sizes))


def epoch_steps(n_train: int, batch_size: int) -> int:
    """Steps in an epoch: like PyTorch's DataLoader (drop_last=False), a smaller last batch counts."""
    return -(-n_train // batch_size)


def augmentation(config: Config, platform: str = platforms.CPU) -> Augmentation:
    return Augmentation(degrees=config.rotate, translate=config.translate, scale=config.scale, crop_p=config.crop_p,
                        crop_size=config.crop_size, gather_free=platforms.gather_free(platform))


def seed_streams(seed: int) -> jax.Array:
    """Independent keys for parameter initialisation, dropout, shuffling and augmentation."""
    return jax.random.split(jax.random.key(seed), 4)


def epoch_order(seed: int, epoch: int, n: int) -> jax.Array:
    """The order in which epoch `epoch` of run `seed` visits the `n` training images."""
    return _epoch_order(np.uint32(seed), epoch, n)


@functools.partial(jax.jit, static_argnums=2)
def _epoch_order(seed: jax.Array, epoch: jax.Array, n: int) -> jax.Array:  # one program for every seed and epoch
    return jax.random.permutation(jax.random.fold_in(seed_streams(seed)[2], epoch), n)


def _abstract(shape: tuple[int, ...], dtype, placement: NamedSharding | None = None) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=placement)


def _abstract_state(state, placement: NamedSharding):
    return jax.tree.map(lambda x: _abstract(x.shape, x.dtype, placement), state)


def training_programs(config: Config, graphdef, state, mesh: Mesh, *, pool: int, train: int, runs: int = 0,
                      forms: str | None = None) -> dict[str, jax.stages.Lowered]:
    """The training chunk (steps `first` to `last - 1` of an epoch) and, where the epoch ends in a
    smaller batch, the step that takes it ("tail"), lowered for `mesh`.

    They take the state (only its shapes matter here), the running metrics, the `pool` images and
    labels on the device, the order in which an epoch visits `train` of them, the augmentation key
    and the step bounds. With `runs`, every run's state, metrics, order and key have a leading run
    axis. The state and metrics are donated. `forms`: the platform whose forms to take (by default
    the mesh's; `init_run` builds the graphdef's). Raises ConfigError when a batch does not split
    evenly across the mesh.
    """
    b = config.batch_size
    tail = train % b
    sharding.check_batches(mesh, **{"batch size": b, "last batch": tail or b})
    platform = forms or platforms.of(mesh)
    step_options = dict(mean=config.mean, std=config.std, split=sharding.batch_split(mesh),
                        augmentation=augmentation(config, platform), label_smoothing=config.label_smoothing)
    replicated = sharding.replicated(mesh)
    run = (runs,) if runs else ()
    step_bound = _abstract((), jnp.int32)
    args = (_abstract_state(state, replicated), _abstract((*run, 3), jnp.float32, replicated),
            _abstract((pool, 28, 28), jnp.uint8, replicated), _abstract((pool,), jnp.int32, replicated),
            _abstract((*run, train), jnp.int32, replicated), _abstract(run, seed_streams(0).dtype, replicated))
    lowered = {}
    for name, step, size, bounds in (("chunk", train_steps, b, 2), ("tail", train_step, tail, 1)):
        if size:
            program = step_program(step, graphdef, side_by_side=bool(runs), batch_size=size, **step_options)
            lowered[name] = jax.jit(program, donate_argnums=(0, 1)).lower(*args, *[step_bound] * bounds)
    return lowered


def evaluation_program(config: Config, eval_graphdef, state, mesh: Mesh, *, batch: int, block: int, runs: int = 0,
                       forms: str | None = None) -> jax.stages.Lowered:
    """The logits of a block of `block` images (uint8, with a leading run axis with `runs`), lowered
    for `mesh`, with BatchNorm's running statistics and no dropout; the logits come out replicated,
    so that every process of a multi-host run reads them whole.

    On CPU the block runs in batches of `batch` one after another (`lax.map`): small batches keep
    the activations in cache, and gap's 10,000 test images took 0.67 s in batches of 100 against
    1.48 s in a Python loop over batches of 2,000, with the same logits to the bit (a busy 2-core
    Intel Xeon). Elsewhere the block runs at once. `forms`: the platform whose forms to take (by
    default the mesh's).
    """
    logits = functools.partial(logits_step, eval_graphdef, mean=config.mean, std=config.std,
                               split=sharding.batch_split(mesh))
    in_batches = platforms.eval_in_batches(forms or platforms.of(mesh))

    def block_logits(state, images_NHW):
        state = eval_state(eval_graphdef, state)  # once, outside the loop over batches
        if not in_batches:
            return logits(state, images_NHW)
        batches = images_NHW.reshape(-1, batch, *images_NHW.shape[1:])
        return jax.lax.map(lambda x: logits(state, x), batches).reshape(images_NHW.shape[0], -1)

    replicated = sharding.replicated(mesh)
    run = (runs,) if runs else ()
    program = jax.jit(jax.vmap(block_logits) if runs else block_logits, out_shardings=replicated)
    return program.lower(_abstract_state(state, replicated), _abstract((*run, block, 28, 28), jnp.uint8, replicated))
