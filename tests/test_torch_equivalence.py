"""The Flax models compute what the PyTorch originals compute: same weights, same logits, same step."""

import dataclasses

import numpy as np
import optax
import pytest
from flax import nnx

from jaxmnist.models import MODELS, count_params
from jaxmnist.optim import make_optimizer
from jaxmnist.recipes import RECIPES
from jaxmnist.train import loss_fn, normalize, to_unit

torch = pytest.importorskip("torch", reason="the torch extra is not installed: pip install -e '.[torch]'")
from jaxmnist.torch_ref import TORCH_MODELS, load_torch_weights  # noqa: E402


@pytest.fixture(scope="module")
def batch(mnist):
    """64 real training images, normalised, in both layouts, and their labels."""
    x_BHWC = np.asarray(normalize(to_unit(mnist.train.images_NHW[:64]), 0.1307, 0.3081))
    return x_BHWC, x_BHWC.transpose(0, 3, 1, 2).copy(), mnist.train.labels_N[:64]


def twins(arch: str, dropout: float | None = None):
    torch.manual_seed(0)
    kwargs = {} if dropout is None else {"dropout": dropout}
    torch_model = TORCH_MODELS[arch](**kwargs)
    model = MODELS[arch](**kwargs, rngs=nnx.Rngs(1))
    load_torch_weights(model, torch_model)
    return model, torch_model


@pytest.mark.parametrize("arch", sorted(TORCH_MODELS))
def test_parameter_counts_agree_with_pytorch(arch):
    model, torch_model = twins(arch)
    assert count_params(model) == sum(p.numel() for p in torch_model.parameters())


@pytest.mark.parametrize("arch", sorted(TORCH_MODELS))
def test_eval_mode_logits_match(arch, batch):
    x_BHWC, x_BCHW, _ = batch
    model, torch_model = twins(arch)
    if arch == "gap":  # non-trivial running statistics, so that eval mode is really tested
        torch_model.train()
        with torch.no_grad():
            for _ in range(3):
                torch_model(torch.from_numpy(x_BCHW) * 1.5 + 0.2)
        load_torch_weights(model, torch_model)
    model.eval()
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x_BCHW)).numpy()
    np.testing.assert_allclose(np.asarray(model(x_BHWC)), expected, atol=1e-5, rtol=0)


def torch_grads_as_flax(torch_model, arch):
    """PyTorch's .grad of every parameter, in a Flax model's layout (loaded as if they were weights)."""
    holder, _ = twins(arch, dropout=0.0)
    grads_model = type(torch_model)(dropout=0.0)
    with torch.no_grad():
        for p, g in zip(grads_model.parameters(), torch_model.parameters()):
            p.copy_(g.grad)
    load_torch_weights(holder, grads_model)
    return nnx.to_flat_state(nnx.state(holder, nnx.Param))


def flat(model, kind=nnx.Param):
    return [(path, np.asarray(v[...])) for path, v in nnx.to_flat_state(nnx.state(model, kind))]


@pytest.mark.parametrize("optimizer", ["recipe", "sgd"])
@pytest.mark.parametrize("arch", sorted(TORCH_MODELS))
def test_one_training_step_matches(arch, optimizer, batch):
    """One step from the same weights on the same batch: same loss, same gradients, same update.

    "recipe" is the recipe's own chain (clipping, L2 weight decay, Adam at the schedule's first lr);
    "sgd" is SGD with momentum and weight decay. Dropout is 0 so that no masks are drawn.
    """
    x_BHWC, x_BCHW, labels = batch
    config = dataclasses.replace(RECIPES[arch], dropout=0.0)
    if optimizer == "sgd":
        config = dataclasses.replace(config, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=2e-4)
    model, torch_model = twins(arch, dropout=0.0)

    torch_model.train()
    if optimizer == "sgd":
        torch_opt = torch.optim.SGD(torch_model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        torch_opt = torch.optim.Adam(torch_model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    torch_loss = torch.nn.functional.cross_entropy(torch_model(torch.from_numpy(x_BCHW)),
                                                   torch.from_numpy(labels).long())
    torch_loss.backward()
    if config.clip_norm:
        torch.nn.utils.clip_grad_norm_(torch_model.parameters(), config.clip_norm)
    torch_grads = torch_grads_as_flax(torch_model, arch)  # after clipping, as the optimiser sees them
    torch_opt.step()

    model.train()
    opt = nnx.Optimizer(model, make_optimizer(config, steps_per_epoch=844), wrt=nnx.Param)
    (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x_BHWC, labels)
    if config.clip_norm:
        grads = optax.clip_by_global_norm(config.clip_norm).update(grads, optax.EmptyState())[0]
    before = flat(model)
    opt.update(model, grads)
    stepped, _ = twins(arch, dropout=0.0)
    load_torch_weights(stepped, torch_model)

    assert float(loss) == pytest.approx(torch_loss.item(), abs=1e-6)
    for (path, g_torch), (_, g_ours) in zip(torch_grads, nnx.to_flat_state(grads)):
        scale = np.abs(np.asarray(g_torch[...])).max()
        # Within 1e-4 of the tensor's largest gradient: float summation order, and max-pool ties
        # (equal activations split the gradient where PyTorch gives it to the first).
        np.testing.assert_allclose(np.asarray(g_ours[...]), np.asarray(g_torch[...]), atol=1e-4 * scale, rtol=0,
                                   err_msg=str(path))
    for (path, ours), (_, theirs), (_, g_torch), (_, start) in zip(flat(model), flat(stepped), torch_grads, before):
        if optimizer == "sgd":
            np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0, err_msg=str(path))
        else:
            # Adam's first step is lr * g / (|g| + eps) with g the clipped gradient plus weight decay:
            # well conditioned where |g| is not tiny; where it is, float noise may flip its sign, and
            # the step is still bounded by lr.
            g = np.abs(np.asarray(g_torch[...]) + config.weight_decay * start)
            well = g > 1e-4 * g.max()
            np.testing.assert_allclose(ours[well], theirs[well], atol=1e-5, rtol=0, err_msg=str(path))
            assert np.all(np.abs(ours - start) <= config.lr * 1.001), path
    # Running means agree; running variances differ by PyTorch's unbiased n/(n-1) factor (n >= 3136).
    for (path, a), (_, b) in zip(flat(model, nnx.BatchStat), flat(stepped, nnx.BatchStat)):
        np.testing.assert_allclose(a, b, rtol=5e-4, atol=1e-7, err_msg=str(path))


def test_pytorch_recipe_reference_trains(mnist):
    from jaxmnist.data import Dataset
    from jaxmnist.torch_ref import fit_torch

    subset = Dataset("mnist", mnist.train.take(np.arange(3_000)), mnist.test.take(np.arange(1_000)), "subset")
    result = fit_torch(dataclasses.replace(RECIPES["gap"], val_size=500, epochs=2), subset, threads=1)
    assert result.test_accuracy > 0.8 and 0.8 < result.val_accuracy <= 1 and result.train_seconds > 0
