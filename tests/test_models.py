import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmnist.models import DOCUMENTED_PARAMS, MODELS, PARAM_BUDGET, build, count_params, has_dropout


def make(arch, seed=0):
    return MODELS[arch](rngs=nnx.Rngs(seed))


def abstract(arch):
    """The model's shapes only, from `nnx.eval_shape`: counting needs no allocation."""
    return nnx.eval_shape(lambda: make(arch))


@pytest.mark.parametrize("arch, expected", [("fc", 24_714), ("gap", 24_048), ("conv6", 24_498), ("under20k", 13_562),
                                            ("res8k", 8_530), ("gap4", 24_938)])
def test_exact_parameter_counts(arch, expected):
    assert count_params(abstract(arch)) == expected == DOCUMENTED_PARAMS[arch]


def test_every_registered_model_is_documented_and_under_budget():
    assert set(MODELS) == set(DOCUMENTED_PARAMS)
    for arch in MODELS:
        assert count_params(abstract(arch)) < PARAM_BUDGET


def test_batchnorm_running_statistics_are_not_counted():
    model = make("gap")
    stats = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    assert stats == 2 * (16 + 32 + 64)
    everything = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Variable)) if hasattr(x, "size"))
    assert count_params(model) < everything


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_output_shape_and_dtype(arch):
    model = make(arch)
    model.eval()
    logits = model(jnp.zeros((5, 28, 28, 1)))
    chex.assert_shape(logits, (5, 10))
    chex.assert_type(logits, jnp.float32)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_train_mode_is_stochastic_where_there_is_dropout_and_eval_mode_is_not(arch):
    x = jax.random.normal(jax.random.key(1), (16, 28, 28, 1))
    model = make(arch)
    model.train()
    if has_dropout(arch) and model.dropout.rate > 0:
        assert not np.allclose(model(x), model(x)), "dropout should draw a new mask on each call"
    else:
        np.testing.assert_array_equal(model(x), model(x))
    model.eval()
    np.testing.assert_array_equal(model(x), model(x))


def test_dropout_is_settable_only_where_the_original_has_it():
    assert {arch for arch in MODELS if has_dropout(arch)} == {"fc", "gap", "res8k", "gap4"}
    assert build("res8k", rngs=nnx.Rngs(0)).dropout.rate == 0.03
    assert build("res8k", dropout=0.2, rngs=nnx.Rngs(0)).dropout.rate == 0.2
    with pytest.raises(TypeError):
        build("conv6", dropout=0.1, rngs=nnx.Rngs(0))


# Each convolution's output (H, W, C), from the write-ups' layer tables (NCHW there).
CONV_OUTPUTS = {
    "conv6": [(26, 26, 8), (24, 24, 16), (22, 22, 28), (11, 11, 8), (9, 9, 16), (7, 7, 28)],
    "under20k": [(26, 26, 8), (24, 24, 16), (22, 22, 28), (22, 22, 8), (9, 9, 16), (7, 7, 16), (5, 5, 28)],
    "res8k": [(28, 28, 16), (28, 28, 24), (14, 14, 24), (14, 14, 16), (14, 14, 24), (7, 7, 10)],
    "gap4": [(28, 28, 16), (14, 14, 32), (14, 14, 32), (7, 7, 36)],  # its docstring
}


@pytest.mark.parametrize("arch", sorted(CONV_OUTPUTS))
def test_convolution_output_shapes_follow_the_write_up(arch, monkeypatch):
    shapes = []
    conv_call = nnx.Conv.__call__

    def recording_call(self, x):
        y = conv_call(self, x)
        shapes.append(y.shape[1:])
        return y

    monkeypatch.setattr(nnx.Conv, "__call__", recording_call)
    model = make(arch)
    model.eval()
    model(jnp.zeros((2, 28, 28, 1)))
    assert shapes == CONV_OUTPUTS[arch]


def test_batchnorm_uses_batch_statistics_in_train_mode_only():
    x = jax.random.normal(jax.random.key(2), (8, 28, 28, 1))
    model = make("gap", seed=3)
    model.set_attributes(deterministic=True, use_running_average=False)  # BatchNorm in train mode, no dropout
    alone, together = model(x[:1]), model(x)[:1]
    assert not np.allclose(alone, together, atol=1e-4), "an example's output should depend on its batch"
    model.eval()
    np.testing.assert_allclose(model(x[:1]), model(x)[:1], rtol=1e-5, atol=1e-5)


def test_batchnorm_running_statistics_move_with_pytorch_momentum():
    model = make("gap")
    model.set_attributes(deterministic=True, use_running_average=False)
    x = 3.0 + jax.random.normal(jax.random.key(4), (4, 28, 28, 1))
    conv_out = model.conv1(x)
    model(x)
    # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch statistic.
    np.testing.assert_allclose(model.bn1.mean[...], 0.1 * conv_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_initialisation_follows_pytorch_defaults(arch):
    """Weights and biases ~ U(±1/sqrt(fan_in)), BatchNorm scale 1 and offset 0."""
    model = make(arch)
    for path, module in nnx.iter_graph(model):
        if isinstance(module, (nnx.Conv, nnx.Linear)):
            kernel = module.kernel[...]
            bound = 1 / np.sqrt(np.prod(kernel.shape[:-1]))
            assert np.abs(kernel).max() <= bound
            assert np.abs(kernel).max() > 0.9 * bound, f"{path}: not a uniform fill up to the bound"
            if module.bias is not None:
                assert np.abs(module.bias[...]).max() <= bound
                assert np.any(module.bias[...] != 0)
        if isinstance(module, nnx.BatchNorm):
            np.testing.assert_array_equal(module.scale[...], 1)
            np.testing.assert_array_equal(module.bias[...], 0)


class ForwardJitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        for arch in MODELS:
            model = make(arch)
            model.eval()
            graphdef, state = nnx.split(model)
            forward = self.variant(lambda s, x, g=graphdef: nnx.merge(g, s)(x))
            x = jax.random.normal(jax.random.key(5), (3, 28, 28, 1))
            chex.assert_trees_all_close(forward(state, x), model(x), rtol=1e-5, atol=1e-5)


def test_gap4_is_within_twice_gaps_multiply_adds():
    """The record model's compute bound: at most 2x gap's multiply-adds per image in its convolutions
    (the heads add 640 and 360)."""
    def macs(arch):
        total, conv_call = [0], nnx.Conv.__call__

        def counting_call(self, x):
            y = conv_call(self, x)
            total[0] += int(np.prod(y.shape[1:]) * np.prod(self.kernel.shape[:-1]))
            return y

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(nnx.Conv, "__call__", counting_call)
            model = make(arch)
            model.eval()
            model(jnp.zeros((1, 28, 28, 1)))
        return total[0]

    assert macs("gap") == 1_919_232
    assert macs("gap4") == 3_330_432 < 2 * macs("gap")


def test_batchnorm_momentum_is_pytorchs_convention():
    assert build("gap4", rngs=nnx.Rngs(0)).bn1.momentum == 0.9  # PyTorch's 0.1
    assert MODELS["gap4"](bn_momentum=0.05, rngs=nnx.Rngs(0)).bn1.momentum == 0.95
