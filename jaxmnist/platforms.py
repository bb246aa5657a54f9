"""The forms of a program that depend on the platform it runs on: every such choice is made here,
from the platform of the mesh the program is lowered for (not of the machine that lowers it).

jaxmnist's speed tricks were measured on a 2-core CPU, and each was kept because XLA:CPU ran it
faster: the batch-sliced convolutions with their own backward pass (`layers.conv2d`), evaluation
in `lax.map` batches of 100 that stay in cache, and bilinear resampling by gathers
(`augment.warp`). On a TPU each of them costs: XLA's TPU cost model put gap's training step at
1.08 ms with `layers.conv2d` and 0.31 ms with plain convolutions, and resampling by gathers at
4x res8k's whole step (docs/accelerators.md, "Compiled for TPU and GPU"). So on CPU the
programs are those measured, and elsewhere they take the plain forms: plain
`lax.conv_general_dilated` under autodiff, a whole evaluation block at once, and resampling as
matrix products (`augment.warp_by_matmul`). Models never see any of this.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

CPU = "cpu"
EVAL_BATCH = 100  # images per evaluation step on CPU: small enough for the activations to stay in cache


def of(mesh: Mesh) -> str:
    """The platform the mesh's devices are: "cpu", "tpu", "gpu" (or "cuda", "rocm")."""
    return mesh.devices.flat[0].platform


def adapt(model: nnx.Module, platform: str) -> None:
    """Gives `model`'s convolutions the form that suits `platform`, in place (the parameters stay)."""
    if platform == CPU:
        return  # the layers are built in their CPU forms
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Conv):
            node.conv_general_dilated = jax.lax.conv_general_dilated


def eval_in_batches(platform: str) -> bool:
    """Whether evaluation runs a block of images as batches of about EVAL_BATCH one after another
    (`lax.map`), as on CPU, or the whole block at once."""
    return platform == CPU


def gather_free(platform: str) -> bool:
    """Whether augmentation resamples by matrix products rather than gathers: on CPU the gathers
    ran ~4x faster (1.2 ms against 5.4 ms for 128 images); on a TPU they cost ~40x conv6's model."""
    return platform != CPU
