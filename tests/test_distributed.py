"""When a process joins a multi-host run, the host-to-device transfer every host makes, and a real
two-process run."""

import json
import os
import socket
import subprocess
import sys

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


def test_put_takes_pytrees_with_prng_keys():
    placement = sharding.replicated(sharding.make_mesh())
    tree = {"key": jax.random.key(3), "w": jax.numpy.ones((2, 3))}
    put = sharding.put(tree, placement)
    assert jax.dtypes.issubdtype(put["key"].dtype, jax.dtypes.prng_key) and put["w"].sharding == placement
    np.testing.assert_array_equal(jax.random.key_data(put["key"]), jax.random.key_data(tree["key"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_of_four_devices_train_as_one_of_eight(mnist_dir, tmp_path):
    """A real multi-host launch on one machine: two processes, each driving 4 fake CPU devices,
    joined by jax.distributed (CPU collectives over gloo), against one process with 8 devices."""
    flags = ["--arch", "gap", "--train-size", "640", "--data-dir", str(mnist_dir), "--no-progress"]
    base = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    launch = dict(base, JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}", JAX_NUM_PROCESSES="2")
    hosts = [subprocess.Popen([sys.executable, "-m", "jaxmnist.train", *flags, "--json", str(tmp_path / f"{i}.json")],
                              env=dict(launch, JAX_PROCESS_ID=str(i)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outputs = [host.communicate(timeout=300) for host in hosts]
    assert [host.returncode for host in hosts] == [0, 0], outputs
    one = subprocess.run([sys.executable, "-m", "jaxmnist.train", *flags, "--json", str(tmp_path / "one.json")],
                         env=dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=8"), capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    # Process 0 alone reports (gloo's own connection lines go to both processes' stdout).
    assert "test accuracy" in outputs[0][0] and "test accuracy" not in outputs[1][0]
    assert not (tmp_path / "1.json").exists()
    multi, single = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("0", "one"))
    assert multi["device"].startswith("8 cpu devices") and single["device"].startswith("8 cpu devices")
    assert multi["train_images"] == 640 and single["train_images"] == 640
    # Measured: losses 4e-5 apart (relative), test accuracies 0.0002 (the cross-process reduction order differs).
    assert multi["per_epoch"][0]["train_loss"] == pytest.approx(single["per_epoch"][0]["train_loss"], rel=1e-3)
    assert abs(multi["test_accuracy"] - single["test_accuracy"]) <= 0.002
