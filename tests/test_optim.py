"""The optimiser chains and schedules, checked against PyTorch's update rules and schedulers."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmnist.config import Config
from jaxmnist.optim import make_optimizer, make_schedule, onecycle_momentum
from jaxmnist.recipes import RECIPES


def test_gap_optimizer_clips_then_adds_l2_then_adam():
    """First Adam step is -lr * g / (|g| + eps), with g = clip(raw) + wd * param (PyTorch's order)."""
    config = RECIPES["gap"]
    tx = make_optimizer(config, steps_per_epoch=844)
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    raw = {"w": jnp.array([30.0, 40.0, 0.0])}  # global norm 50: clipped to norm 1
    updates, _ = tx.update(raw, tx.init(params), params)
    g = raw["w"] / 50.0 + 1e-4 * params["w"]
    np.testing.assert_allclose(updates["w"], -0.015 * g / (jnp.abs(g) + 1e-8), rtol=1e-5)


def test_sgd_with_momentum_and_l2_matches_pytorch_update_rule():
    config = dataclasses.replace(RECIPES["fc"], optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
    tx = make_optimizer(config, steps_per_epoch=10)
    params, grad = jnp.array([2.0]), jnp.array([0.5])
    state = tx.init(params)
    buf = 0.0
    for _ in range(3):
        updates, state = tx.update(grad, state, params)
        buf = 0.9 * buf + (0.5 + 0.01 * float(params[0]))  # torch.optim.SGD: buf = m * buf + (g + wd * p)
        np.testing.assert_allclose(updates, [-0.1 * buf], rtol=1e-6)
        params = optax.apply_updates(params, updates)


def test_cosine_schedule_runs_from_lr_to_final_lr_over_the_run():
    schedule = make_schedule(RECIPES["gap"], steps_per_epoch=844)
    assert float(schedule(0)) == pytest.approx(0.015)
    assert float(schedule(422)) == pytest.approx((0.015 + 0.001) / 2)
    assert float(schedule(844)) == pytest.approx(0.001)
    assert float(make_schedule(RECIPES["fc"], 938)(500)) == pytest.approx(1e-3)


def _torch_schedule(scheduler_cls, steps: int, momentum: float = 0.9, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """The learning rate and momentum PyTorch's scheduler sets before each of `steps` steps."""
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=kwargs.pop("lr", 0.1), momentum=momentum)
    scheduler = scheduler_cls(optimizer, **kwargs)
    lrs, momenta = [], []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    return np.array(lrs), np.array(momenta)


def test_step_schedule_is_pytorch_steplr_stepped_per_epoch():
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    config = Config(lr=1e-3, schedule="step", decay_epochs=15, decay_factor=0.1, epochs=20)
    steps_per_epoch = 469
    per_epoch, _ = _torch_schedule(torch.optim.lr_scheduler.StepLR, 20, lr=1e-3, step_size=15, gamma=0.1)
    schedule = make_schedule(config, steps_per_epoch)
    ours = np.array([schedule(epoch * steps_per_epoch + offset) for epoch in range(20) for offset in (0, 468)])
    np.testing.assert_allclose(ours, np.repeat(per_epoch, 2), rtol=1e-6)


def test_onecycle_learning_rate_and_momentum_follow_pytorch_onecyclelr():
    """`OneCycleLR(max_lr, total_steps)` with its defaults; optax places the peak at step
    int(0.3 * total), PyTorch one step earlier, so the two agree to a step's worth of the curve."""
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    total = 1875
    lrs, momenta = _torch_schedule(torch.optim.lr_scheduler.OneCycleLR, total, max_lr=0.1, total_steps=total)
    config = dataclasses.replace(RECIPES["res8k"], lr=0.1)
    schedule, momentum = make_schedule(config, total), onecycle_momentum(total)
    ours_lr = np.array([schedule(i) for i in range(total)])
    ours_momentum = np.array([momentum(i) for i in range(total)])
    np.testing.assert_allclose(ours_lr, lrs, atol=0.1 * 2e-3)
    np.testing.assert_allclose(ours_momentum, momenta, atol=0.1 * 2e-3)
    assert ours_lr.argmax() in (lrs.argmax(), lrs.argmax() + 1)
    assert ours_lr[0] == pytest.approx(0.1 / 25, rel=1e-6) and lrs[0] == pytest.approx(0.1 / 25, rel=1e-6)
    assert float(schedule(total)) == pytest.approx(0.1 / 25 / 1e4, rel=1e-5) == lrs[-1]


def test_onecycle_cycles_the_sgd_momentum_the_optimiser_uses():
    """With momentum 0.95 at step 0, the second SGD update is -lr1 * (g + 0.95' * g), not 0.9."""
    config = Config(optimizer="sgd", lr=0.1, momentum=0.9, schedule="onecycle")
    tx = make_optimizer(config, steps_per_epoch=100)
    params, grad = jnp.array([0.0]), jnp.array([1.0])
    state = tx.init(params)
    _, state = tx.update(grad, state, params)
    updates, _ = tx.update(grad, state, params)
    lr1, m1 = make_schedule(config, 100)(1), onecycle_momentum(100)(1)
    np.testing.assert_allclose(updates, [-lr1 * (1 + m1)], rtol=1e-5)
    assert 0.94 < float(m1) < 0.95


def test_params_ema_averages_the_parameters_after_each_update_and_passes_updates_through():
    from jaxmnist.optim import averaged_params, params_ema

    tx = optax.chain(optax.sgd(1.0), params_ema(0.5))
    params, grad = jnp.array([2.0]), jnp.array([0.5])
    state = tx.init(params)
    average = 2.0
    for t in range(1, 4):
        updates, state = tx.update(grad, state, params)
        np.testing.assert_allclose(updates, [-0.5])  # plain SGD's update, untouched
        params = optax.apply_updates(params, updates)
        decay = min(0.5, (1 + t) / (10 + t))
        average = decay * average + (1 - decay) * float(params[0])
        np.testing.assert_allclose(averaged_params(state), [average], rtol=1e-6)
    assert averaged_params(make_optimizer(RECIPES["gap"], 10).init(params)) is None


def test_ema_b1_b2_and_defaults_leave_the_gap_chain_alone():
    """New fields at their defaults build gap's chain; set, they reach Adam and the chain's end."""
    from jaxmnist.optim import averaged_params

    params, grads = {"w": jnp.array([1.0, -2.0])}, [{"w": jnp.array([0.3, -0.1])}, {"w": jnp.array([-0.2, 0.4])}]
    config = dataclasses.replace(RECIPES["gap"], clip_norm=None, weight_decay=0.0, b1=0.7, b2=0.9, ema=0.99)
    ours, reference = make_optimizer(config, 100), optax.adam(make_schedule(config, 100), b1=0.7, b2=0.9)
    state, reference_state = ours.init(params), reference.init(params)
    for g in grads:
        updates, state = ours.update(g, state, params)
        expected, reference_state = reference.update(g, reference_state, params)
        np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)
    assert averaged_params(state) is not None


def test_linear_schedule_with_warmup_rises_from_zero_then_falls_to_final_lr():
    config = Config(lr=0.01, schedule="linear", final_lr=0.0, warmup=0.2)
    schedule = make_schedule(config, steps_per_epoch=100)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(0.005)
    assert float(schedule(20)) == pytest.approx(0.01)
    assert float(schedule(60)) == pytest.approx(0.005)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
    plain = make_schedule(dataclasses.replace(config, warmup=0.0, final_lr=0.001), 100)
    assert float(plain(0)) == pytest.approx(0.01) and float(plain(100)) == pytest.approx(0.001)
