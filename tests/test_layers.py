import chex
import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax import lax

from jaxmnist.layers import _slices, batch_norm, conv, conv2d, max_pool_2x2


def reference_conv(x, w, padding):
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


CASES = [  # (input shape, kernel shape, padding)
    ((4, 28, 28, 1), (3, 3, 1, 16), ((1, 1), (1, 1))),  # first layer: one input channel
    ((4, 14, 14, 16), (3, 3, 16, 32), ((1, 1), (1, 1))),
    ((3, 11, 11, 8), (3, 3, 8, 16), ((0, 0), (0, 0))),  # valid padding
    ((2, 28, 28, 1), (3, 3, 1, 8), ((0, 0), (0, 0))),
    ((2, 11, 11, 28), (1, 1, 28, 8), ((0, 0), (0, 0))),  # 1x1 transition
    ((2, 9, 7, 3), (3, 3, 3, 5), ((2, 1), (0, 1))),  # uneven everything
    ((96, 24, 24, 16), (3, 3, 16, 28), ((0, 0), (0, 0))),  # big enough to run in slices of the batch
]


def test_only_large_batches_of_large_maps_are_sliced():
    assert _slices(128, (22, 22)) == 4  # conv6 / under20k at batch 128: 4 slices of 32 images
    assert _slices(96, (22, 22)) == 3 and _slices(96, (24, 24)) == 4  # a last batch of 96, forward and backward
    assert _slices(64, (14, 14)) == _slices(32, (28, 28)) == _slices(128, (9, 9)) == 1  # gap, res8k, small maps


@pytest.mark.parametrize("x_shape, w_shape, padding", CASES)
def test_conv2d_values_and_gradients_match_lax(x_shape, w_shape, padding):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    expected = reference_conv(x, w, padding)
    chex.assert_trees_all_close(conv2d(x, w, padding), expected, rtol=1e-5, atol=1e-4)  # inference
    trained, _ = jax.vjp(lambda x, w: conv2d(x, w, padding), x, w)  # training computes one channel another way
    chex.assert_trees_all_close(trained, expected, rtol=1e-5, atol=1e-4)
    cotangent = jax.random.normal(kg, expected.shape)

    def pullback(f):
        return jax.vjp(lambda x, w: f(x, w, padding), x, w)[1](cotangent)

    ours, theirs = jax.jit(lambda: pullback(conv2d))(), pullback(reference_conv)
    scale = [float(jnp.abs(t).max()) for t in theirs]
    for a, b, s in zip(ours, theirs, scale):
        chex.assert_trees_all_close(a / s, b / s, atol=2e-6)


def test_conv2d_gradients_inside_a_scan_match_lax():
    x = jax.random.normal(jax.random.key(1), (2, 14, 14, 4))
    w = jax.random.normal(jax.random.key(2), (3, 3, 4, 4)) * 0.2
    padding = ((1, 1), (1, 1))

    def unrolled_loss(f):
        def loss(w):
            def body(h, _):
                return jnp.tanh(f(h, w, padding)), None
            return (lax.scan(body, x, length=3)[0] ** 2).sum()
        return loss

    chex.assert_trees_all_close(jax.jit(jax.grad(unrolled_loss(conv2d)))(w), jax.grad(unrolled_loss(reference_conv))(w),
                                rtol=1e-4, atol=1e-4)


def test_conv_module_is_pytorch_conv2d_shaped_and_routes_through_conv2d():
    layer = conv(3, 5, 3, padding=1, bias=True, rngs=nnx.Rngs(0))
    assert layer.kernel.shape == (3, 3, 3, 5) and layer.bias.shape == (5,)
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
    expected = reference_conv(x, layer.kernel[...], ((1, 1), (1, 1))) + layer.bias[...]
    chex.assert_trees_all_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(layer)(x))
    assert "custom_vjp_call" in jaxpr


@pytest.mark.parametrize("shape", [(2, 28, 28, 3), (2, 7, 7, 4), (1, 5, 6, 2)])
def test_max_pool_2x2_matches_floor_mode_reduce_window(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    chex.assert_trees_all_close(max_pool_2x2(x), nnx.max_pool(x, (2, 2), strides=(2, 2)))
    grad_ours = jax.grad(lambda v: (max_pool_2x2(v) ** 2).sum())(x)
    grad_ref = jax.grad(lambda v: (nnx.max_pool(v, (2, 2), strides=(2, 2)) ** 2).sum())(x)
    chex.assert_trees_all_close(grad_ours, grad_ref)
    assert max_pool_2x2(x).shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])


def test_batch_norm_trains_as_flax_does_and_infers_the_same_function():
    """Training (batch statistics) is Flax's code; inference is one multiply-add, equal up to rounding."""
    k = jax.random.split(jax.random.key(2), 5)
    x = jax.random.normal(k[0], (8, 5, 5, 6)) * 3 + 1
    ours, flax_bn = batch_norm(6, rngs=nnx.Rngs(0)), nnx.BatchNorm(6, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    for bn in (ours, flax_bn):
        bn.scale[...], bn.bias[...] = jax.random.normal(k[1], (6,)), jax.random.normal(k[2], (6,))
        bn.mean[...], bn.var[...] = jax.random.normal(k[3], (6,)), jax.random.uniform(k[4], (6,), minval=0.1, maxval=4)
    chex.assert_trees_all_close(ours(x, use_running_average=True), flax_bn(x, use_running_average=True),
                                rtol=1e-6, atol=1e-5)
    chex.assert_trees_all_equal(ours(x, use_running_average=False), flax_bn(x, use_running_average=False))
    chex.assert_trees_all_equal((ours.mean[...], ours.var[...]), (flax_bn.mean[...], flax_bn.var[...]))
    ours.eval()
    chex.assert_trees_all_close(ours(x), flax_bn(x, use_running_average=True), rtol=1e-6, atol=1e-5)
