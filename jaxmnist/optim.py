"""The optimiser of a recipe, as an optax chain in the order PyTorch applies the same steps."""

import optax

from jaxmnist.config import Config


def make_schedule(config: Config, total_steps: int) -> optax.Schedule:
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, total_steps, alpha=config.final_lr / config.lr)
    return optax.constant_schedule(config.lr)


def make_optimizer(config: Config, total_steps: int) -> optax.GradientTransformation:
    """`clip_grad_norm_` acts on the raw gradients, then PyTorch's `weight_decay` adds an L2 term
    to them (coupled, not AdamW), then the optimiser's update."""
    schedule = make_schedule(config, total_steps)
    if config.optimizer == "sgd":
        update = optax.sgd(schedule, momentum=config.momentum or None)
    else:
        update = optax.adam(schedule)
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity(),
        optax.add_decayed_weights(config.weight_decay) if config.weight_decay else optax.identity(),
        update,
    )
