"""Data parallelism: a one-axis ("data",) mesh over the devices, the batch split along it.

Parameters, optimiser state and the uint8 dataset are replicated on every device; each batch is
gathered and then constrained to be split along "data", and XLA's SPMD partitioner inserts the
collectives. BatchNorm's batch statistics are therefore over the global batch, so an N-device
run computes what the 1-device run computes (up to float reduction order). One device is the
same program on a mesh of one. On several hosts (`jaxmnist.distributed`) the mesh spans every
host's devices and each host puts only its own devices' shards (`put`).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmnist.errors import ConfigError

AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A ("data",) mesh over the first `num_devices` devices (all of them when None)."""
    available = jax.devices()
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


def put(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The host array `x`, the same in every process, laid out as `sharding`.

    Each process transfers only the shards its own devices hold, so a multi-host run costs no
    more than a one-host run; `jax.device_put` of a host array onto other hosts' devices would
    first all-gather it to check that every process passed the same value. On one host the
    result is what `jax.device_put(x, sharding)` gives.
    """
    return jax.make_array_from_process_local_data(sharding, x, x.shape)


def check_batches(mesh: Mesh, **batch_sizes: int) -> None:
    """Every batch must split evenly across the devices: raises ConfigError naming the fix."""
    n = mesh.size
    for name, size in batch_sizes.items():
        if size % n:
            raise ConfigError(f"Invalid configuration: the {name} of {size} images does not divide across "
                              f"{n} devices: use a batch size that is a multiple of {n} (and leaves a last batch "
                              f"that is one too), or --devices with a divisor of it.")
