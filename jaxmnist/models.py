"""The tiny-MNIST models, each an `nnx.Module` mirroring its PyTorch original layer for layer.

Inputs are `x_BHWC` float32 (B, 28, 28, 1), already normalised; outputs are `logits_BK`.
Layers come from `jaxmnist.layers`, which builds each as its PyTorch namesake does (PyTorch's
default initialisation included: the seed recipes were tuned with it), in forms XLA:CPU runs fast.
Flattening is NHWC, PyTorch's is NCHW: the same function up to a fixed
permutation of the first Linear's rows, which an i.i.d. initialisation does not see.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxmnist.layers import batch_norm, conv, linear, max_pool_2x2


class FC(nnx.Module):
    """V1.0 "ImageClassifier" of write-up 001: 24,714 parameters, 96.86% test after one epoch.

    Three conv3x3 (pad 1, bias) + ReLU + maxpool blocks, 1 -> 8 -> 16 -> 24 channels and
    28 -> 14 -> 7 -> 3 pixels, then Linear 216 -> 88 + ReLU + Dropout(0.3) and Linear 88 -> 10.
    """

    def __init__(self, *, dropout: float = 0.3, rngs: nnx.Rngs):
        self.conv1 = conv(1, 8, 3, padding=1, bias=True, rngs=rngs)
        self.conv2 = conv(8, 16, 3, padding=1, bias=True, rngs=rngs)
        self.conv3 = conv(16, 24, 3, padding=1, bias=True, rngs=rngs)
        self.fc1 = linear(3 * 3 * 24, 88, bias=True, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.fc2 = linear(88, 10, bias=True, rngs=rngs)

    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        x = max_pool_2x2(nnx.relu(self.conv1(x_BHWC)))  # (B, 14, 14, 8)
        x = max_pool_2x2(nnx.relu(self.conv2(x)))  # (B, 7, 7, 16)
        x = max_pool_2x2(nnx.relu(self.conv3(x)))  # (B, 3, 3, 24)
        x = x.reshape(x.shape[0], -1)  # (B, 216)
        x = self.dropout(nnx.relu(self.fc1(x)))  # (B, 88)
        return self.fc2(x)  # (B, 10)


class GAP(nnx.Module):
    """V2.0 "EfficientMNIST" of write-ups 000/001: 24,048 parameters, 97.11-97.68% test in one epoch.

    Three conv3x3 (pad 1, no bias) + BatchNorm + ReLU + maxpool blocks, 1 -> 16 -> 32 -> 64
    channels and 28 -> 14 -> 7 -> 3 pixels, global average pooling, Dropout(0.1), Linear 64 -> 10
    without bias. BatchNorm's running variance is Flax's biased estimate where PyTorch keeps the
    unbiased one: a factor n/(n-1) with n = 64*28*28 at the first layer, below 1e-4 relative.
    """

    def __init__(self, *, dropout: float = 0.1, rngs: nnx.Rngs):
        self.conv1 = conv(1, 16, 3, padding=1, bias=False, rngs=rngs)
        self.bn1 = batch_norm(16, rngs=rngs)
        self.conv2 = conv(16, 32, 3, padding=1, bias=False, rngs=rngs)
        self.bn2 = batch_norm(32, rngs=rngs)
        self.conv3 = conv(32, 64, 3, padding=1, bias=False, rngs=rngs)
        self.bn3 = batch_norm(64, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.fc = linear(64, 10, bias=False, rngs=rngs)

    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        x = max_pool_2x2(nnx.relu(self.bn1(self.conv1(x_BHWC))))  # (B, 14, 14, 16)
        x = max_pool_2x2(nnx.relu(self.bn2(self.conv2(x))))  # (B, 7, 7, 32)
        x = max_pool_2x2(nnx.relu(self.bn3(self.conv3(x))))  # (B, 3, 3, 64)
        x = x.mean(axis=(1, 2))  # global average pool: (B, 64)
        return self.fc(self.dropout(x))  # (B, 10)


MODELS: dict[str, type[nnx.Module]] = {"fc": FC, "gap": GAP}
# What each write-up documents; tests and benchmarks hold the models to it.
DOCUMENTED_PARAMS = {"fc": 24_714, "gap": 24_048}
PARAM_BUDGET = 25_000


def count_params(model: nnx.Module) -> int:
    """Trainable values as PyTorch counts them: weights, biases, BatchNorm scale and offset.

    BatchNorm running statistics are `nnx.BatchStat`, not `nnx.Param`, so they are left out.
    """
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
