"""Multi-host runs: join the other processes before JAX touches a device.

One process per host runs the same program over a mesh of every host's devices
(`jax.distributed`): each host transfers only its own devices' shards (`sharding.put`) and the
collectives are the ones XLA puts in the sharded program. Launch every host with the same command:

- on Cloud TPU pod slices, under Slurm or Open MPI, add `--distributed`: JAX reads the
  coordinator, the process count and this process's id from the cluster;
- anywhere else, set `JAX_COORDINATOR_ADDRESS=host:port`, `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID` in each process's environment (no flag needed).

Without either, nothing happens: one process drives every local device, as on one TPU VM (a Kaggle v5e-8).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax

from jaxmnist.errors import ConfigError

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def launch_args(requested: bool, environ: Mapping[str, str] = os.environ) -> dict | None:
    """The keyword arguments for `jax.distributed.initialize`, or None for a one-process run.

    Raises:
        ConfigError: a process count above 1 without the coordinator or this process's id.
    """
    num_processes = environ.get(NUM_PROCESSES_ENV)
    if num_processes is None or int(num_processes) <= 1:
        return {} if requested else None  # {}: JAX detects the cluster (Cloud TPU, Slurm, Open MPI)
    missing = [name for name in (COORDINATOR_ENV, PROCESS_ID_ENV) if not environ.get(name)]
    if missing:
        raise ConfigError(f"Invalid configuration: {NUM_PROCESSES_ENV}={num_processes} asks for a multi-host run, "
                          f"but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: give every "
                          f"process the coordinator's host:port in {COORDINATOR_ENV} and its own id, 0 to "
                          f"{int(num_processes) - 1}, in {PROCESS_ID_ENV}.")
    return {"coordinator_address": environ[COORDINATOR_ENV], "num_processes": int(num_processes),
            "process_id": int(environ[PROCESS_ID_ENV])}


def initialize(requested: bool = False, environ: Mapping[str, str] = os.environ) -> bool:
    """Joins the multi-host run this process was launched into (once); returns whether it is one.

    Must run before anything else in the process uses JAX's devices.
    """
    if jax.distributed.is_initialized():
        return True
    args = launch_args(requested, environ)
    if args is None:
        return False
    try:
        jax.distributed.initialize(**args)
    except ValueError as e:  # --distributed outside any cluster JAX knows
        raise ConfigError(f"Invalid configuration: --distributed, but JAX found no cluster to join ({e}): "
                          f"set {COORDINATOR_ENV}, {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV} on every process, "
                          "or leave --distributed out for a one-host run.") from None
    return True


def is_main_process() -> bool:
    """Whether this process prints and writes results (process 0; the only one on one host)."""
    return jax.process_index() == 0
