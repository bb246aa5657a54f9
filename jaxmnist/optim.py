"""The optimiser of a recipe, as an optax chain in the order PyTorch applies the same steps."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmnist.config import Config

# PyTorch's OneCycleLR defaults: warm up for 30% of the steps from lr/25 to lr, then anneal to
# lr/25/1e4, both on a cosine; meanwhile the momentum (SGD's, or Adam's beta1) goes the other way,
# 0.95 -> 0.85 -> 0.95 (`cycle_momentum=True`, which overrides the optimiser's own momentum).
ONECYCLE_PCT_START, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4
ONECYCLE_MOMENTUM = (0.95, 0.85)


def make_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate at each step of a run of `config.epochs` epochs, stepped per batch."""
    total_steps = steps_per_epoch * config.epochs
    if config.schedule in ("cosine", "linear"):  # after `warmup` steps from 0 up to lr, if any
        warmup = int(config.warmup * total_steps)
        if config.schedule == "cosine":
            decay = optax.cosine_decay_schedule(config.lr, total_steps - warmup, alpha=config.final_lr / config.lr)
        else:
            decay = optax.linear_schedule(config.lr, config.final_lr, total_steps - warmup)
        if warmup:
            return optax.join_schedules([optax.linear_schedule(0.0, config.lr, warmup), decay], [warmup])
        return decay
    if config.schedule == "step":  # StepLR(step_size=decay_epochs, gamma=decay_factor), stepped per epoch
        return optax.exponential_decay(config.lr, config.decay_epochs * steps_per_epoch, config.decay_factor,
                                       staircase=True)
    if config.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(total_steps, config.lr, ONECYCLE_PCT_START, ONECYCLE_DIV,
                                              ONECYCLE_FINAL_DIV)
    return optax.constant_schedule(config.lr)


def onecycle_momentum(total_steps: int) -> optax.Schedule:
    high, low = ONECYCLE_MOMENTUM
    return optax.piecewise_interpolate_schedule(
        "cosine", high, {int(ONECYCLE_PCT_START * total_steps): low / high, total_steps: high / low})


def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """`clip_grad_norm_` acts on the raw gradients, then PyTorch's `weight_decay` adds an L2 term
    to them (coupled, not AdamW), then the optimiser's update."""
    hyper = {"learning_rate": make_schedule(config, steps_per_epoch)}
    if config.optimizer == "sgd":
        update, hyper["momentum"] = optax.sgd, config.momentum or None
    else:
        update, hyper["b1"], hyper["b2"] = optax.adam, config.b1, config.b2
    if config.schedule == "onecycle":
        hyper["momentum" if config.optimizer == "sgd" else "b1"] = onecycle_momentum(steps_per_epoch * config.epochs)
        update = optax.inject_hyperparams(update)
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity(),
        optax.add_decayed_weights(config.weight_decay) if config.weight_decay else optax.identity(),
        update(**hyper),
        params_ema(config.ema) if config.ema else optax.identity(),
    )


class ParamsEmaState(NamedTuple):
    count: jax.Array
    ema: optax.Params


def params_ema(decay: float) -> optax.GradientTransformation:
    """Keeps an exponential moving average of the parameters after each step; the updates pass unchanged.

    Place it last in a chain: it sees the final updates and the parameters they apply to, and
    averages `params + updates`. The decay warms up as min(decay, (1 + t) / (10 + t)) at step t,
    as TensorFlow's ExponentialMovingAverage with `num_updates` does, so that the average of a
    short run is not dominated by the initial weights. `averaged_params` reads the average back.
    """
    def init(params):
        return ParamsEmaState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.array, params))

    def update(updates, state, params):
        count = optax.safe_increment(state.count)
        d = jnp.minimum(decay, (1.0 + count) / (10.0 + count))
        ema = optax.incremental_update(optax.apply_updates(params, updates), state.ema, 1.0 - d)
        return updates, ParamsEmaState(count, ema)

    return optax.GradientTransformation(init, update)


def averaged_params(opt_state) -> optax.Params | None:
    """The weight average `params_ema` keeps in `opt_state` (any chain), or None without one."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ParamsEmaState))
             if isinstance(s, ParamsEmaState)]
    return found[0].ema if found else None
