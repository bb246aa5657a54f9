"""Run by tests/test_sharding.py in a subprocess with 8 fake CPU devices (XLA_FLAGS must be set
before JAX starts): trains the same seed on 1 and on 8 devices and prints what it saw as JSON."""

import dataclasses
import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmnist import data, sharding
from jaxmnist.errors import ConfigError
from jaxmnist.loop import fit
from jaxmnist.recipes import RECIPES
from jaxmnist.trainer import Trainer

STEPS, LR = 100, 0.005
# A gradient 1% off: the smallest error a wrong cross-device average (1 device of 8 counted
# twice, say) would make. Its drift is what the float noise's drift must stay well below.
WRONG_GRADIENT = 1.01


def sgd_trainer(mnist: data.Dataset, devices: int, lr: float = LR) -> Trainer:
    # Plain SGD, not the recipe's Adam: see test_one_and_eight_devices_agree_step_by_step for why.
    config = dataclasses.replace(RECIPES["gap"], val_size=0, devices=devices, optimizer="sgd", lr=lr, momentum=0.0,
                                 schedule="constant", final_lr=0.0, clip_norm=None, weight_decay=0.0)
    return Trainer(config, mnist.train.take(np.arange(6_400)), mnist.test.take(np.arange(1_000)))


def one_step(trainer: Trainer, state, i: int):
    """Step `i` of epoch 0 from `state`: (new state, its loss)."""
    state, metrics = trainer._chunk(state, jnp.zeros(3), trainer.train.images_NHW, trainer.train.labels_N,
                                    trainer._shuffle(0), trainer.augment_keys, np.int32(i), np.int32(i + 1))
    return state, float(metrics[0]) / trainer.config.batch_size


def values(state, kind) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(nnx.filter_state(state[0], kind))]


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(max(np.max(np.abs(x - y)) for x, y in zip(a, b)))


def step_by_step(mnist: data.Dataset) -> dict:
    """100 steps on 1 device, on 8, and on 1 with the gradient 1% off, side by side; and at every
    step, one 8-device step taken from the 1-device state (so that nothing accumulates)."""
    one, eight, wrong = sgd_trainer(mnist, 1), sgd_trainer(mnist, 8), sgd_trainer(mnist, 1, LR * WRONG_GRADIENT)
    out = {name: [] for name in ("losses_one", "losses_eight", "drift", "wrong_drift", "step_params", "step_stats",
                                 "step_gradients", "gradient_scale")}
    for i in range(STEPS):
        before = values(one.state, nnx.Param)
        forced, _ = one_step(eight, jax.device_put(jax.tree.map(jnp.copy, one.state), eight.replicated), i)
        one.state, loss_one = one_step(one, one.state, i)
        eight.state, loss_eight = one_step(eight, eight.state, i)
        wrong.state, _ = one_step(wrong, wrong.state, i)
        after = values(one.state, nnx.Param)
        # Plain SGD's update is -lr * gradient: the gradient of each side, in float64.
        gradients = [[(b - a) / LR for b, a in zip(before, side)] for side in (after, values(forced, nnx.Param))]
        out["losses_one"].append(loss_one)
        out["losses_eight"].append(loss_eight)
        out["drift"].append(max_difference(after, values(eight.state, nnx.Param)))
        out["wrong_drift"].append(max_difference(after, values(wrong.state, nnx.Param)))
        out["step_params"].append(max_difference(after, values(forced, nnx.Param)))
        out["step_stats"].append(max_difference(values(one.state, nnx.BatchStat), values(forced, nnx.BatchStat)))
        out["step_gradients"].append(max_difference(*gradients))
        out["gradient_scale"].append(float(max(np.max(np.abs(g)) for g in gradients[0])))
    hlo = eight._chunk.as_text()  # after SPMD partitioning: the program one device runs
    out["hlo"] = {n: {"all_reduce": "all-reduce" in text, "image_batches": sorted(set(re.findall(
        r"f32\[\d+,28,28,1\]", text))), "state_devices": len(jax.tree.leaves(t._chunk.input_shardings)[0].device_set)}
        for n, t, text in (("one", one, one._chunk.as_text()), ("eight", eight, hlo))}
    return out


def put_matches_device_put() -> bool:
    """`sharding.put` lays a host array out shard for shard as `jax.device_put` does, split or replicated."""
    mesh, x = sharding.make_mesh(8), np.arange(64 * 28 * 28, dtype=np.uint8).reshape(64, 28, 28)
    for placement in (sharding.batch_split(mesh), sharding.replicated(mesh)):
        put, reference = sharding.put(x, placement), jax.device_put(x, placement)
        shards = [(s.device, s.index, np.asarray(s.data)) for s in put.addressable_shards]
        expected = [(s.device, s.index, np.asarray(s.data)) for s in reference.addressable_shards]
        if put.sharding != reference.sharding or len(shards) != 8 or any(
                (d, i) != (e, j) or not np.array_equal(a, b) for (d, i, a), (e, j, b) in zip(shards, expected)):
            return False
    return True


def main() -> None:
    mnist = data.load("mnist", sys.argv[1])
    out = {"device_count": jax.device_count(), **step_by_step(mnist)}
    print(f"parameter difference, 1 vs 8 devices, after steps 1/10/100: "
          f"{out['drift'][0]:.1e}/{out['drift'][9]:.1e}/{out['drift'][-1]:.1e}; with a gradient 1% off: "
          f"{out['wrong_drift'][0]:.1e}/{out['wrong_drift'][9]:.1e}/{out['wrong_drift'][-1]:.1e}; one step from "
          f"the same state, worst of {STEPS}: parameters {max(out['step_params']):.1e}, BatchNorm statistics "
          f"{max(out['step_stats']):.1e}, gradients {max(out['step_gradients']):.1e}", file=sys.stderr)
    out["put_matches_device_put"] = put_matches_device_put()
    errors = []
    for devices, batch in ((16, 64), (8, 60)):
        try:
            fit(dataclasses.replace(RECIPES["gap"], devices=devices, batch_size=batch), mnist, progress=False)
        except ConfigError as e:
            errors.append(str(e))
    out["errors"] = errors
    if "--epoch" in sys.argv:
        out["epoch"] = {n: fit(dataclasses.replace(RECIPES["gap"], devices=n), mnist, progress=False).test_accuracy
                        for n in (1, 8)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
