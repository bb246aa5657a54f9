import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxmnist import cli, data
from jaxmnist.config import Config
from jaxmnist.optim import make_optimizer, make_schedule
from jaxmnist.recipes import RECIPES
from jaxmnist.train import Trainer, epoch_steps, fit, main

JSON_KEYS = {"arch", "params", "seed", "epochs", "test_accuracy", "val_accuracy", "train_seconds",
             "compile_seconds", "images_per_second", "device", "jax_version"}


# Optimiser and schedule ------------------------------------------------------------------------

def test_gap_optimizer_clips_then_adds_l2_then_adam():
    """First Adam step is -lr * g / (|g| + eps), with g = clip(raw) + wd * param (PyTorch's order)."""
    config = RECIPES["gap"]
    tx = make_optimizer(config, total_steps=844)
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    raw = {"w": jnp.array([30.0, 40.0, 0.0])}  # global norm 50: clipped to norm 1
    updates, _ = tx.update(raw, tx.init(params), params)
    g = raw["w"] / 50.0 + 1e-4 * params["w"]
    np.testing.assert_allclose(updates["w"], -0.015 * g / (jnp.abs(g) + 1e-8), rtol=1e-5)


def test_sgd_with_momentum_and_l2_matches_pytorch_update_rule():
    config = dataclasses.replace(RECIPES["fc"], optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
    tx = make_optimizer(config, total_steps=10)
    params, grad = jnp.array([2.0]), jnp.array([0.5])
    state = tx.init(params)
    buf = 0.0
    for _ in range(3):
        updates, state = tx.update(grad, state, params)
        buf = 0.9 * buf + (0.5 + 0.01 * float(params[0]))  # torch.optim.SGD: buf = m * buf + (g + wd * p)
        np.testing.assert_allclose(updates, [-0.1 * buf], rtol=1e-6)
        params = optax.apply_updates(params, updates)


def test_cosine_schedule_runs_from_lr_to_final_lr_over_the_run():
    schedule = make_schedule(RECIPES["gap"], total_steps=844)
    assert float(schedule(0)) == pytest.approx(0.015)
    assert float(schedule(422)) == pytest.approx((0.015 + 0.001) / 2)
    assert float(schedule(844)) == pytest.approx(0.001)
    assert float(make_schedule(RECIPES["fc"], 938)(500)) == pytest.approx(1e-3)


# Command line ----------------------------------------------------------------------------------

def test_arch_selects_its_recipe_and_flags_override_fields():
    _, config = cli.parse(["--arch", "fc"])
    assert config == RECIPES["fc"]
    _, config = cli.parse(["--arch", "gap", "--lr", "0.01", "--clip-norm", "none", "--seed", "3",
                           "--no-verify-checksums", "--val-size", "0"])
    assert config == dataclasses.replace(RECIPES["gap"], lr=0.01, clip_norm=None, seed=3, verify_checksums=False,
                                         val_size=0)
    _, config = cli.parse(["--recipe", "gap", "--arch", "fc"])
    assert (config.arch, config.lr) == ("fc", RECIPES["gap"].lr)


def test_every_config_field_has_a_flag():
    flags = {a.dest for a in cli.build_parser()._actions}
    assert {f.name for f in dataclasses.fields(Config)} <= flags


def test_recipes_are_valid_and_the_gap_recipe_is_the_documented_one():
    for recipe in RECIPES.values():
        recipe.validate()
    gap = RECIPES["gap"]
    assert (gap.batch_size, gap.val_size, gap.lr, gap.final_lr, gap.weight_decay, gap.clip_norm, gap.dropout) == (
        64, 6_000, 0.015, 0.001, 1e-4, 1.0, 0.1)
    assert (gap.mean, gap.std, gap.schedule, gap.optimizer) == (0.1307, 0.3081, "cosine", "adam")
    assert (RECIPES["fc"].batch_size, RECIPES["fc"].dropout, RECIPES["fc"].val_size) == (64, 0.3, 0)


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "use a batch size of at least 1"),
    (["--batch-size", "54001"], "batch size 54001 is larger than the 54000 training images"),
    (["--lr", "0"], "learning rate is 0.0: it must be positive"),
    (["--lr", "-0.1"], "learning rate is -0.1: it must be positive"),
    (["--epochs", "0"], "train for at least 1 epoch"),
    (["--dropout", "1"], "a rate must lie in [0, 1)"),
    (["--val-size", "60000"], "val_size is 60000 but the training set holds only 60000 images"),
    (["--clip-norm", "0"], "use a positive norm, or none"),
    (["--train-size", "0"], "train on at least 1 image, or none"),
    (["--train-size", "54001"], "train_size is 54001 but 54000 training images are left after the validation split"),
    (["--train-size", "32"], "batch size 64 is larger than the 32 training images"),
])
def test_impossible_hyper_parameters_exit_2_with_one_paragraph(flags, message, mnist_dir, capsys):
    assert main(["--arch", "gap", "--data-dir", str(mnist_dir), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("jaxmnist: error: Invalid configuration:")
    assert err.strip().count("\n") == 0 and "Traceback" not in err


def test_bad_data_dirs_exit_2_naming_the_fix(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (corrupt / f"{name}.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    for folder, message in [("file", "is not a directory"), ("empty", "lacks train-images-idx3-ubyte"),
                            ("corrupt", "corrupt or truncated gzip")]:
        assert main(["--arch", "fc", "--data-dir", str(tmp_path / folder), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and "--data-dir" in err and err.strip().count("\n") == 0


def test_unknown_architecture_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse(["--arch", "resnet50"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxmnist: error: argument --arch: invalid choice: 'resnet50' (choose from")
    assert "fc" in err and "gap" in err
    assert err.strip().count("\n") == 0 and "--help" in err
    with pytest.raises(Exception, match="unknown architecture 'resnet50': choose one of fc, gap"):
        fit(Config(arch="resnet50"))


# Training ----------------------------------------------------------------------------------------

def small(mnist: data.Dataset, n_train: int, n_test: int) -> data.Dataset:
    return data.Dataset("mnist", mnist.train.take(np.arange(n_train)), mnist.test.take(np.arange(n_test)), "subset")


def test_partial_last_batch_is_a_step_of_its_own():
    assert epoch_steps(60_000, 64) == 938  # fc: 937 * 64 + 32
    assert epoch_steps(54_000, 64) == 844  # gap: 843 * 64 + 48
    assert epoch_steps(54_000, 54_000) == 1 and epoch_steps(1, 64) == 1


def test_same_seed_same_numbers_and_another_seed_differs(mnist):
    subset = small(mnist, 3_000, 1_000)
    config = dataclasses.replace(RECIPES["gap"], val_size=500, epochs=2)
    first, again = fit(config, subset, progress=False), fit(config, subset, progress=False)
    other = fit(dataclasses.replace(config, seed=1), subset, progress=False)
    numbers = lambda r: [(e.train_loss, e.train_accuracy, e.val_accuracy, e.test_accuracy) for e in r.epochs]  # noqa: E731
    assert numbers(first) == numbers(again)
    assert numbers(first) != numbers(other)
    assert first.epochs[-1].test_accuracy > 0.8  # 2 x 40 steps on 2,500 images already learn
    assert first.train_images == 2_500 and len(first.epochs) == 2


def test_train_size_trains_on_the_start_of_the_split_for_quick_runs(mnist):
    subset = small(mnist, 3_000, 500)
    config = dataclasses.replace(RECIPES["gap"], val_size=500, train_size=640)
    result = fit(config, subset, progress=False)
    assert result.train_images == 640 and result.val_accuracy is not None  # the validation split is unchanged
    assert result.epochs[0].train_seconds > 0 and 0 <= result.test_accuracy <= 1


def test_training_updates_parameters_and_batchnorm_statistics_only_in_train_steps(mnist):
    # 256 + 44 images: 4 full batches of 64 and a last one of 44, so both compiled steps run.
    trainer = Trainer(RECIPES["gap"], small(mnist, 300, 100).train, [mnist.test.take(np.arange(100))])

    def snapshot(kind):
        return [np.array(x) for x in jax.tree.leaves(nnx.filter_state(trainer.state[0], kind))]

    before = {kind: snapshot(kind) for kind in (nnx.Param, nnx.BatchStat)}
    trainer.evaluate(trainer.eval_splits[0])
    for kind, values in before.items():
        assert all(np.array_equal(x, y) for x, y in zip(values, snapshot(kind))), f"evaluation changed {kind}"
    loss, accuracy, _ = trainer.train_epoch(0)
    assert np.isfinite(loss) and 0 <= accuracy <= 1
    for kind, values in before.items():
        assert any(not np.array_equal(x, y) for x, y in zip(values, snapshot(kind))), f"training left {kind}"


@pytest.mark.parametrize("arch, floor", [("gap", 0.975), ("fc", 0.96)])
def test_one_real_epoch_from_the_command_line(arch, floor, mnist_dir, tmp_path):
    out = tmp_path / "summary.json"
    run = subprocess.run([sys.executable, "-m", "jaxmnist.train", "--arch", arch, "--data-dir", str(mnist_dir),
                          "--json", str(out), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    summary = json.loads(out.read_text())
    assert JSON_KEYS <= set(summary)
    assert summary["arch"] == arch and summary["epochs"] == 1 and summary["seed"] == 0
    assert summary["params"] == {"gap": 24_048, "fc": 24_714}[arch]
    assert summary["test_accuracy"] >= floor, summary
    if arch == "gap":
        assert 0.9 < summary["val_accuracy"] <= 1
        assert summary["train_images"] == 54_000
    else:
        assert summary["val_accuracy"] is None and summary["train_images"] == 60_000
    assert summary["train_seconds"] > 0 and summary["compile_seconds"] > 0
    assert summary["images_per_second"] == pytest.approx(summary["train_images"] / summary["train_seconds"])
    assert f"{summary['test_accuracy']:.2%}" in run.stdout

