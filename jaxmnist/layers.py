"""The layers the models are built from: PyTorch's defaults, in forms that XLA:CPU runs fast.

Each helper builds what its PyTorch namesake builds (same parameters, same initialisation, same
function); where the obvious JAX spelling is slow on XLA:CPU the helper computes the same
function another way, and says what it measured. The models stay plain `nnx` code.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]

# U(±1/sqrt(fan_in)): the bound of PyTorch's kaiming_uniform_(a=sqrt(5)) default for weights.
_torch_kernel_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_bias_init(fan_in: int) -> nnx.Initializer:
    bound = 1 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def conv(cin: int, cout: int, kernel: int, *, padding: int, bias: bool, rngs: nnx.Rngs) -> nnx.Conv:
    """`nn.Conv2d(cin, cout, kernel, padding=padding, bias=bias)` with PyTorch's initialisation."""
    return nnx.Conv(cin, cout, (kernel, kernel), padding=padding, use_bias=bias, kernel_init=_torch_kernel_init,
                    bias_init=_torch_bias_init(cin * kernel * kernel), conv_general_dilated=conv_general_dilated,
                    rngs=rngs)


def linear(din: int, dout: int, *, bias: bool, rngs: nnx.Rngs) -> nnx.Linear:
    """`nn.Linear(din, dout, bias=bias)` with PyTorch's initialisation."""
    return nnx.Linear(din, dout, use_bias=bias, kernel_init=_torch_kernel_init, bias_init=_torch_bias_init(din),
                      rngs=rngs)


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` whose inference (running statistics) is one multiply-add per value.

    Flax computes `(x - mean) * m + bias` with `m = scale / sqrt(var + eps)`; this computes
    `x * m + (bias - mean * m)`, the same function up to rounding. XLA:CPU fuses a whole
    evaluation batch of a model into one YNNPACK graph, which then does one pass fewer over every
    activation: gap's 10,000 test images in batches of 100 took 0.43 s Flax's way and 0.34 s this
    way (2-core Intel Xeon). Training, with the batch's statistics, is Flax's code unchanged.
    """

    def __call__(self, x, use_running_average: bool | None = None, *, mask: jax.Array | None = None):
        running = self.use_running_average if use_running_average is None else use_running_average
        if not running or mask is not None:
            return super().__call__(x, use_running_average, mask=mask)
        m = self.scale[...] * lax.rsqrt(self.var[...] + self.epsilon)
        return x * m + (self.bias[...] - self.mean[...] * m)


def batch_norm(channels: int, *, momentum: float = 0.1, rngs: nnx.Rngs) -> BatchNorm:
    """`nn.BatchNorm2d(channels, momentum=momentum)`: PyTorch's momentum m (default 0.1) is Flax's
    1 - m (0.9); epsilon 1e-5 in both."""
    return BatchNorm(channels, momentum=1 - momentum, epsilon=1e-5, rngs=rngs)


def max_pool_2x2(x_BHWC: jax.Array) -> jax.Array:
    """`nn.MaxPool2d(2)`, floor mode (7 -> 3 drops the last row and column), as a reshape-and-max.

    The same function as `nnx.max_pool(x, (2, 2), (2, 2))`, whose reduce_window backward pass
    (select_and_scatter) XLA:CPU runs slowly: forward + backward at batch 64 of 28x28x16 take
    3.9 ms that way and 1.3 ms this way. A window with tied maxima splits the gradient evenly
    between them where PyTorch gives it all to the first. Ties come from zeros after a ReLU (whose
    own gradient there is 0) or from constant image regions, whose tied positions see identical
    inputs, so the weight gradients come out the same either way.
    """
    b, h, w, c = x_BHWC.shape
    x = x_BHWC[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, **kwargs):
    """`lax.conv_general_dilated` with the plain stride-1 NHWC case routed to `conv2d` below."""
    plain = (tuple(window_strides) == (1, 1) and feature_group_count == 1 and not isinstance(padding, str)
             and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
             == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
    if plain and kwargs.get("precision") is None and kwargs.get("preferred_element_type") is None:
        return conv2d(lhs, rhs, tuple(tuple(p) for p in padding))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, **kwargs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x_BHWC: jax.Array, w_HWIO: jax.Array, padding: Padding) -> jax.Array:
    """Stride-1 cross-correlation, NHWC x HWIO -> NHWC, with a backward pass XLA:CPU runs fast.

    Why not plain `lax.conv_general_dilated` and autodiff (batch 64, XLA:CPU, 2 cores)?
    - One input channel (every model's first layer): Eigen's convolution takes 1.25 ms for
      28x28, 1 -> 16; nine shifted multiply-adds (`_shifted_sum`) fuse into one loop, 0.12 ms.
      Inference, which takes no gradient and so runs this function's own body rather than
      `_conv2d_fwd`, does better with the nine shifted windows side by side times the kernel as
      one GEMM: gap's first layer over 10,000 images in batches of 100 took 0.13 s against 0.17 s,
      and the whole evaluation 0.28 s against 0.35 s. Training keeps the shifted sum, so that its
      numbers stay those measured; the two differ by rounding only.
    - Backward: autodiff emits the weight gradient as a convolution in a transposed layout
      (2.9 ms at 14x14, 16 -> 32); one GEMM over every output pixel takes 2.0 ms.
    - Every convolution here is in the canonical NHWC/HWIO layout, the only one XLA:CPU
      compiles to its fast path inside a loop body (`lax.scan`), which it does not canonicalise.
    - A large batch of large maps runs in slices of the batch (`_slices`).
    """
    if w_HWIO.shape[2] > 1:
        return _sliced_conv(x_BHWC, w_HWIO, padding)
    patches = jnp.concatenate(list(_windows(x_BHWC, w_HWIO.shape[:2], padding).values()), axis=-1)
    return patches @ w_HWIO.reshape(-1, w_HWIO.shape[-1])


def _shifted_sum(x_BHWC: jax.Array, w_HWIO: jax.Array, padding: Padding) -> jax.Array:
    windows = _windows(x_BHWC, w_HWIO.shape[:2], padding)
    return sum(window * w_HWIO[i, j, 0] for (i, j), window in windows.items())


# XLA:CPU's convolution and weight-gradient GEMM fall off a cache cliff when one call covers too
# many output pixels: conv6's 24x24, 16 -> 28 layer takes 4.6 ms forward + backward at batch 32
# and 40.8 ms at batch 128 (benchmarks/conv_shapes.py). Above _SLICE_ABOVE output pixels a call is
# cut into equal slices of the batch of at most _SLICE_PIXELS, run one after another (`lax.map`):
# a conv6 epoch 30.4 -> 22.6 s. gap, fc and res8k (at most 25,088) are never sliced.
_SLICE_ABOVE, _SLICE_PIXELS = 32_768, 16_384


def _slices(batch: int, out_hw: tuple[int, int]) -> int:
    """Into how many equal slices to cut a batch whose convolution outputs `out_hw` per image."""
    per_image = out_hw[0] * out_hw[1]
    if batch * per_image <= _SLICE_ABOVE:
        return 1
    size = max(d for d in range(1, batch + 1) if batch % d == 0 and (d * per_image <= _SLICE_PIXELS or d == 1))
    return batch // size


def _by_slices(fn, n: int, *arrays_B: jax.Array) -> jax.Array:
    """`fn` over `n` equal batch slices of `arrays_B`, stacked: (n, *fn's output shape)."""
    return lax.map(lambda xs: fn(*xs), tuple(a.reshape(n, a.shape[0] // n, *a.shape[1:]) for a in arrays_B))


def _sliced_conv(x_BHWC: jax.Array, w_HWIO: jax.Array, padding: Padding) -> jax.Array:
    kh, kw = w_HWIO.shape[:2]
    out_hw = (x_BHWC.shape[1] + sum(padding[0]) - kh + 1, x_BHWC.shape[2] + sum(padding[1]) - kw + 1)
    conv = _canonical_conv(padding)
    n = _slices(x_BHWC.shape[0], out_hw)
    if n == 1:
        return conv(x_BHWC, w_HWIO)
    return _by_slices(lambda x: conv(x, w_HWIO), n, x_BHWC).reshape(x_BHWC.shape[0], *out_hw, -1)


def _windows(x_BHWC: jax.Array, kernel: tuple[int, int], padding: Padding) -> dict[tuple[int, int], jax.Array]:
    """For each kernel offset (i, j), the input pixels it meets: `x_pad[:, i:i+Ho, j:j+Wo, :]`."""
    kh, kw = kernel
    x = jnp.pad(x_BHWC, ((0, 0), *padding, (0, 0)))
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return {(i, j): x[:, i: i + ho, j: j + wo, :] for i in range(kh) for j in range(kw)}


def _member_by_member(fn):
    """`fn`, whose `vmap` runs `fn` once per member of the mapped axis inside the one program.

    Training seeds side by side (`jax.vmap` over models, each with its own kernels) turns JAX's
    batching of a convolution into a grouped convolution and of a matrix product into a batched
    one, and XLA:CPU ran both several times slower than the same work one model at a time
    (docs/speed.md, "Seeds side by side"). Everything else in the step batches well.
    """
    mapped = jax.custom_batching.custom_vmap(fn)

    @mapped.def_vmap
    def _rule(axis_size, in_batched, *args):
        members = [mapped(*[a[i] if batched else a for a, batched in zip(args, in_batched)]) for i in range(axis_size)]
        return jnp.stack(members), True

    return mapped


@functools.cache
def _canonical_conv(padding: Padding):
    """Stride-1 NHWC x HWIO convolution."""
    return _member_by_member(
        lambda x_BHWC, w_HWIO: lax.conv_general_dilated(x_BHWC, w_HWIO, (1, 1), padding, dimension_numbers=_NHWC))


@_member_by_member
def _patches_t_matmul(patches_PK: jax.Array, g_PO: jax.Array) -> jax.Array:
    return patches_PK.T @ g_PO


def _conv2d_fwd(x_BHWC, w_HWIO, padding):
    y = _shifted_sum(x_BHWC, w_HWIO, padding) if w_HWIO.shape[2] == 1 else _sliced_conv(x_BHWC, w_HWIO, padding)
    return y, (x_BHWC, w_HWIO)


def _conv2d_bwd(padding, residuals, g_BHWO):
    x_BHWC, w_HWIO = residuals
    kh, kw, cin, cout = w_HWIO.shape
    (top, bottom), (left, right) = padding
    # Input gradient: the "full" correlation of g with the kernel flipped in space, in and out swapped.
    w_flipped = jnp.flip(w_HWIO, (0, 1)).transpose(0, 1, 3, 2)
    full = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
    dx = _sliced_conv(g_BHWO, w_flipped, full)

    def weight_grad(x, g):  # patches (pixels, kh*kw*cin) transposed times g (pixels, cout)
        patches = jnp.concatenate(list(_windows(x, (kh, kw), padding).values()), axis=-1)
        return _patches_t_matmul(patches.reshape(-1, kh * kw * cin), g.reshape(-1, cout))

    n = 1 if cin == 1 else _slices(x_BHWC.shape[0], g_BHWO.shape[1:3])  # nine patch columns: cheap whole
    dw = weight_grad(x_BHWC, g_BHWO) if n == 1 else _by_slices(weight_grad, n, x_BHWC, g_BHWO).sum(0)
    return dx, dw.reshape(kh, kw, cin, cout)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
