"""The optimiser of a recipe, as an optax chain in the order PyTorch applies the same steps."""

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
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, total_steps, alpha=config.final_lr / config.lr)
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
        update = optax.adam
    if config.schedule == "onecycle":
        hyper["momentum" if config.optimizer == "sgd" else "b1"] = onecycle_momentum(steps_per_epoch * config.epochs)
        update = optax.inject_hyperparams(update)
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity(),
        optax.add_decayed_weights(config.weight_decay) if config.weight_decay else optax.identity(),
        update(**hyper),
    )
