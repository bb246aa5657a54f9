"""When a process joins a multi-host run, and the host-to-device transfer every host makes."""

import jax
import numpy as np
import pytest

from jaxmnist import distributed, sharding
from jaxmnist.errors import ConfigError

LAUNCH = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}


def test_one_process_unless_launched_as_several_or_asked():
    assert distributed.launch_args(False, {}) is None
    assert distributed.launch_args(False, {"JAX_NUM_PROCESSES": "1"}) is None
    assert distributed.launch_args(True, {}) == {}  # jax.distributed.initialize() detects the cluster


def test_the_three_variables_name_the_run():
    expected = {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}
    assert distributed.launch_args(False, LAUNCH) == expected
    assert distributed.launch_args(True, LAUNCH) == expected


def test_a_process_count_without_coordinator_or_id_is_refused_naming_the_fix():
    with pytest.raises(ConfigError, match="JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID are not set"):
        distributed.launch_args(False, {"JAX_NUM_PROCESSES": "2"})
    with pytest.raises(ConfigError, match="its own id, 0 to 3, in JAX_PROCESS_ID"):
        distributed.launch_args(False, {k: v for k, v in LAUNCH.items() if k != "JAX_PROCESS_ID"})


def test_a_one_host_run_initialises_nothing():
    assert not distributed.initialize(False, {})
    assert not jax.distributed.is_initialized() and distributed.is_main_process()


@pytest.mark.parametrize("split", [False, True])
def test_put_is_device_put_on_one_host(split):
    mesh = sharding.make_mesh()
    placement = sharding.batch_split(mesh) if split else sharding.replicated(mesh)
    x = np.arange(8 * 28 * 28, dtype=np.uint8).reshape(8, 28, 28)
    put, reference = sharding.put(x, placement), jax.device_put(x, placement)
    assert put.sharding == reference.sharding and put.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(put), x)
