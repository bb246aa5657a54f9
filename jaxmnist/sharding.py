"""Data parallelism: a one-axis ("data",) mesh over the devices, the batch split along it.

Parameters, optimiser state and the uint8 dataset are replicated on every device; each batch is
gathered and then constrained to be split along "data", and XLA's SPMD partitioner inserts the
collectives. BatchNorm's batch statistics are therefore over the global batch, so an N-device
run computes what the 1-device run computes (up to float reduction order). One device is the
same program on a mesh of one. On several hosts (`jaxmnist.distributed`) the mesh spans every
host's devices and each host puts only its own devices' shards (`put`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmnist.errors import ConfigError

AXIS = "data"


def make_mesh(num_devices: int | None = None, available: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data",) mesh over the first `num_devices` (all when None) of the `available` devices:
    this process's by default, or those of a TPU or GPU target compiled for (`jaxmnist.targets`)."""
    available = list(jax.devices() if available is None else available)
    n = len(available) if num_devices is None else num_devices
    if not 1 <= n <= len(available):
        raise ConfigError(f"Invalid configuration: {n} devices requested but {len(available)} "
                          f"{available[0].platform} device(s) are visible: pass --devices between 1 and "
                          f"{len(available)}, or leave it out to use them all.")
    return jax.make_mesh((n,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=available[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_split(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split across the mesh's devices."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def put(tree, placement: NamedSharding):
    """A pytree of host values, the same in every process, laid out as `placement`.

    Leaves are numpy arrays or JAX arrays of this process (PRNG keys included). Each process
    transfers only the shards its own devices hold, so this works unchanged on a multi-host run,
    where `jax.device_put` refuses arrays committed to one process's device and all-gathers host
    arrays to check that every process passed the same value. On one host the result is what
    `jax.device_put(tree, placement)` gives.
    """
    def put_leaf(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put_leaf(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(placement, x, x.shape)

    return jax.tree.map(put_leaf, tree)


def check_batches(mesh: Mesh, **batch_sizes: int) -> None:
    """Every batch must split evenly across the devices: raises ConfigError naming the fix."""
    n = mesh.size
    for name, size in batch_sizes.items():
        if size % n:
            raise ConfigError(f"Invalid configuration: the {name} of {size} images does not divide across "
                              f"{n} devices: use a batch size that is a multiple of {n} (and leaves a last batch "
                              f"that is one too), or --devices with a divisor of it.")
