"""The platform forms: on TPU and GPU the plain forms compute what the CPU's forms compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmnist import layers, platforms
from jaxmnist.programs import init_run, loss_fn, normalize, to_unit
from jaxmnist.recipes import RECIPES


def conv_functions(graphdef, state) -> set:
    model, _ = nnx.merge(graphdef, state)
    return {node.conv_general_dilated for _, node in nnx.iter_graph(model) if isinstance(node, nnx.Conv)}


@pytest.mark.parametrize("arch", ["gap", "conv6"])  # one input channel first; batch slices
def test_plain_convolutions_off_cpu_compute_the_same_loss_and_gradients(mnist, arch):
    config = RECIPES[arch]
    cpu_graphdef, _, cpu_state, _ = init_run(config, 10, platforms.CPU)
    tpu_graphdef, _, tpu_state, _ = init_run(config, 10, "tpu")
    assert conv_functions(cpu_graphdef, cpu_state) == {layers.conv_general_dilated}
    assert conv_functions(tpu_graphdef, tpu_state) == {jax.lax.conv_general_dilated}
    x_BHWC = normalize(to_unit(jnp.asarray(mnist.train.images_NHW[:128])), config.mean, config.std)
    labels_B = jnp.asarray(mnist.train.labels_N[:128])

    def loss_and_grads(graphdef, state):
        model, _ = nnx.merge(graphdef, state)
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x_BHWC, labels_B)
        return loss, jax.tree.leaves(grads)

    loss_and_grads = jax.jit(loss_and_grads, static_argnums=0)

    cpu_loss, cpu_grads = loss_and_grads(cpu_graphdef, cpu_state)
    tpu_loss, tpu_grads = loss_and_grads(tpu_graphdef, tpu_state)
    np.testing.assert_allclose(tpu_loss, cpu_loss, rtol=1e-6)
    # Within 1e-3 of each tensor's largest gradient, as for PyTorch's (tests/test_torch_equivalence.py): the two
    # forms sum in different orders, and BatchNorm's division by the batch's spread magnifies that near conv1.
    # A bias just before a BatchNorm has a gradient of 0 up to rounding (~1e-8): 1e-6 absolute covers it.
    for cpu_grad, tpu_grad in zip(cpu_grads, tpu_grads, strict=True):
        np.testing.assert_allclose(tpu_grad, cpu_grad, rtol=0, atol=max(1e-3 * float(jnp.abs(cpu_grad).max()), 1e-6))
