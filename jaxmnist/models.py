"""The tiny-MNIST models, each an `nnx.Module` mirroring its PyTorch original layer for layer.

Inputs are `x_BHWC` float32 (B, 28, 28, 1), already normalised; outputs are `logits_BK`.
Layers are built by the helpers below so that they start from PyTorch's default initialisation
(`kaiming_uniform_(a=sqrt(5))`, i.e. U(±1/sqrt(fan_in)) for weights and biases), because the seed
recipes were tuned with it. Flattening is NHWC, PyTorch's is NCHW: the same function up to a fixed
permutation of the first Linear's rows, which an i.i.d. initialisation does not see.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

# U(±1/sqrt(fan_in)): the bound of PyTorch's kaiming_uniform_(a=sqrt(5)) default for weights.
_torch_kernel_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_bias_init(fan_in: int) -> nnx.Initializer:
    bound = 1 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def conv3x3(cin: int, cout: int, *, padding: int, bias: bool, rngs: nnx.Rngs) -> nnx.Conv:
    """`nn.Conv2d(cin, cout, 3, padding=padding, bias=bias)` with PyTorch's initialisation."""
    return nnx.Conv(cin, cout, (3, 3), padding=padding, use_bias=bias, kernel_init=_torch_kernel_init,
                    bias_init=_torch_bias_init(cin * 9), rngs=rngs)


def linear(din: int, dout: int, *, bias: bool, rngs: nnx.Rngs) -> nnx.Linear:
    """`nn.Linear(din, dout, bias=bias)` with PyTorch's initialisation."""
    return nnx.Linear(din, dout, use_bias=bias, kernel_init=_torch_kernel_init,
                      bias_init=_torch_bias_init(din), rngs=rngs)


def batch_norm(channels: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """`nn.BatchNorm2d(channels)`: PyTorch's momentum 0.1 is Flax's 0.9; epsilon 1e-5 in both."""
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


def max_pool_2x2(x_BHWC: jax.Array) -> jax.Array:
    """`nn.MaxPool2d(2)`: floor mode (7 -> 3 drops the last row and column), as a reshape-and-max.

    The same function as `nnx.max_pool(x, (2, 2), (2, 2))`, but XLA:CPU compiles its backward pass
    to about half the time of the reduce-window form's.
    """
    b, h, w, c = x_BHWC.shape
    x_BHWC = x_BHWC[:, : h // 2 * 2, : w // 2 * 2]
    return x_BHWC.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class FC(nnx.Module):
    """V1.0 "ImageClassifier" of write-up 001: 24,714 parameters, 96.86% test after one epoch.

    Three conv3x3 (pad 1, bias) + ReLU + maxpool blocks, 1 -> 8 -> 16 -> 24 channels and
    28 -> 14 -> 7 -> 3 pixels, then Linear 216 -> 88 + ReLU + Dropout(0.3) and Linear 88 -> 10.
    """

    def __init__(self, *, dropout: float = 0.3, rngs: nnx.Rngs):
        self.conv1 = conv3x3(1, 8, padding=1, bias=True, rngs=rngs)
        self.conv2 = conv3x3(8, 16, padding=1, bias=True, rngs=rngs)
        self.conv3 = conv3x3(16, 24, padding=1, bias=True, rngs=rngs)
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
        self.conv1 = conv3x3(1, 16, padding=1, bias=False, rngs=rngs)
        self.bn1 = batch_norm(16, rngs=rngs)
        self.conv2 = conv3x3(16, 32, padding=1, bias=False, rngs=rngs)
        self.bn2 = batch_norm(32, rngs=rngs)
        self.conv3 = conv3x3(32, 64, padding=1, bias=False, rngs=rngs)
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
