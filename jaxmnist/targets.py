"""What a program can be compiled for: this machine's devices, or a TPU or GPU that is not here.

A TPU target is a topology that libtpu describes without the chips (`jax[tpu]` brings libtpu); a
GPU target is an XLA GpuTargetConfig (the device's published figures as a text proto, in
`jaxmnist/gpu_targets/`) that the CUDA plugin compiles for without a GPU (`jax[cuda12]`). Either
gives compile-only devices, and `mesh` lays the usual ("data",) mesh over them, so that
`jaxmnist.programs` lowers for them exactly as for local devices.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import importlib.util
import os

import jax
from jax.experimental import topologies
from jax.sharding import Mesh

from jaxmnist import sharding
from jaxmnist.errors import ConfigError

GiB = 2**30
COMPILERS = ("libtpu", "jax-cuda12-plugin")  # the distributions that compile for a TPU, a GPU


@dataclasses.dataclass(frozen=True)
class Target:
    """A device to compile for.

    Attributes:
        name: as `--target` spells it.
        platform: "cpu", "tpu" or "gpu".
        devices: how many (None: this machine's, as many as are visible).
        description: the hardware, and where a user finds it.
        memory_bytes: each device's memory (None: this machine's, read when asked).
        topology: a TPU's topology name, its chips per host and its accelerator type (libtpu's terms).
        target_config: a GPU's GpuTargetConfig file in jaxmnist/gpu_targets/.
        peak_flops: a GPU's published float32 peak (FLOP/s), for a roofline estimate.
        peak_bandwidth: a GPU's published memory bandwidth (bytes/s), for the same.
    """

    name: str
    platform: str
    devices: int | None
    description: str
    memory_bytes: int | None = None
    topology: tuple[str, tuple[int, int, int], str] | None = None
    target_config: str | None = None
    peak_flops: float | None = None
    peak_bandwidth: float | None = None



TARGETS = {t.name: t for t in (
    Target("cpu", "cpu", None, "this machine's CPU (its devices, as training would use them)"),
    Target("tpu-v5e-1", "tpu", 1, "Google TPU v5e, 1 chip (v5litepod-1; Colab's TPU runtime)", 16 * GiB,
           topology=("v5e:1x1", (1, 1, 1), "v5litepod-1")),
    Target("tpu-v5e-8", "tpu", 8, "Google TPU v5e, 8 chips on one host (v5litepod-8; Kaggle's TPU VM v5e-8)", 16 * GiB,
           topology=("v5e:2x4", (2, 2, 1), "v5litepod-8")),
    # Published figures (NVIDIA's data sheets): float32 without tensor cores, and memory bandwidth.
    Target("gpu-t4", "gpu", 1, "NVIDIA T4, 16 GB (Colab's and Kaggle's free GPU)", 16 * 10**9,
           target_config="t4.txtpb", peak_flops=8.1e12, peak_bandwidth=320e9),
    Target("gpu-h100", "gpu", 1, "NVIDIA H100 SXM, 80 GB", 80 * 10**9,
           target_config="h100_sxm.txtpb", peak_flops=67e12, peak_bandwidth=3.35e12),
)}

# libtpu reads these when it loads: a machine without TPUs has no metadata server to ask, no TPU
# worker hostnames and no accelerator type of its own (libtpu warns of each), and may hold another
# libtpu process's lock.
_COMPILE_ONLY_TPU_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
                         "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def install_hint(target: Target) -> str:
    extra = {"tpu": "tpu", "gpu": "cuda12"}[target.platform]
    return f'pip install "jax[{extra}]=={jax.__version__}"'


def check_plugin(target: Target) -> None:
    """ConfigError naming the pip command when the compiler for `target` is not installed."""
    module = {"cpu": None, "tpu": "libtpu", "gpu": "jax_plugins.xla_cuda12"}[target.platform]
    if module is None or _installed(module):
        return
    compiler = {"tpu": "libtpu", "gpu": f"JAX's CUDA plugin ({module})"}[target.platform]
    raise ConfigError(f"Invalid configuration: --target {target.name} compiles with {compiler}, which is not "
                      f"installed: {install_hint(target)} (the compiler of this jax version; no TPU or GPU is "
                      "needed to compile for one), then run this again.")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def mesh(target: Target, num_devices: int | None = None) -> Mesh:
    """The ("data",) mesh over the first `num_devices` of the target's devices (all when None).

    Raises ConfigError when the target's compiler is missing or cannot describe it.
    """
    check_plugin(target)
    if target.platform == "cpu":
        return sharding.make_mesh(num_devices)
    try:
        if target.platform == "tpu":
            for name, value in _COMPILE_ONLY_TPU_ENV.items():
                os.environ.setdefault(name, value)
            name, chips_per_host, accelerator_type = target.topology
            os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
            topology = topologies.get_topology_desc(platform="tpu", topology_name=name, chip_config_name="default",
                                                    chips_per_host_bounds=chips_per_host, num_slices=1)
        else:
            config = (importlib.resources.files("jaxmnist") / "gpu_targets" / target.target_config).read_text()
            topology = topologies.get_topology_desc(platform="cuda", target_config=config, topology="1x1x1")
    except Exception as e:  # the compilers raise their own types (JaxRuntimeError, NotImplementedError, ...)
        raise ConfigError(f"Invalid configuration: jax {jax.__version__} could not describe {target.name} "
                          f"({type(e).__name__}: {str(e).strip().splitlines()[0]}): the installed compiler may not "
                          f"match this jax: {install_hint(target)}.") from e
    return sharding.make_mesh(num_devices, topology.devices)
