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
from jaxmnist.recipes import RECIPES
from jaxmnist.train import Trainer, fit


def hundred_steps(mnist: data.Dataset, devices: int) -> dict:
    # Plain SGD at lr 0.005, not the recipe's Adam: see test_one_and_eight_devices_agree_step_by_step for the
    # parameter drift measured under each optimiser.
    config = dataclasses.replace(RECIPES["gap"], val_size=0, devices=devices, optimizer="sgd", lr=0.005, momentum=0.0,
                                 schedule="constant", final_lr=0.0, clip_norm=None, weight_decay=0.0)
    trainer = Trainer(config, mnist.train.take(np.arange(6_400)), [mnist.test.take(np.arange(1_000))])
    order = trainer._shuffle(0)
    losses = []
    for i in range(100):  # one step per call, to read every step's loss
        trainer.state, metrics = trainer._chunk(trainer.state, jnp.zeros(3), trainer.train.images_NHW,
                                                trainer.train.labels_N, order, np.int32(i), np.int32(i + 1))
        losses.append(float(metrics[0]) / config.batch_size)
    params = [np.asarray(x).tolist() for x in jax.tree.leaves(nnx.filter_state(trainer.state[0], nnx.Param))]
    shardings = jax.tree.leaves(trainer._chunk.input_shardings)
    hlo = trainer._chunk.as_text()  # after SPMD partitioning: the program one device runs
    return {"losses": losses, "params_after_100": params, "hlo_all_reduce": "all-reduce" in hlo,
            "hlo_image_batches": sorted(set(re.findall(r"f32\[\d+,28,28,1\]", hlo))),
            "state_devices": len(shardings[0].device_set), "test_accuracy": trainer.evaluate(trainer.eval_splits[0])}


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
    out = {"device_count": jax.device_count(), "one": hundred_steps(mnist, 1), "eight": hundred_steps(mnist, 8)}
    drift = max(np.max(np.abs(np.subtract(a, b))) for a, b in zip(out["one"]["params_after_100"],
                                                                  out["eight"]["params_after_100"]))
    print(f"max parameter difference after 100 steps, 1 vs 8 devices: {drift:.2e}", file=sys.stderr)
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
