import dataclasses
import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmnist import cli, data, report, sharding
from jaxmnist.config import Config
from jaxmnist.loop import fit
from jaxmnist.models import DOCUMENTED_PARAMS, build
from jaxmnist.optim import averaged_params, make_optimizer
from jaxmnist.programs import epoch_order, epoch_steps, eval_state, init_run, logits_step, loss_fn, seed_streams
from jaxmnist.recipes import RECIPES
from jaxmnist.train import main
from jaxmnist.trainer import Evaluator, Trainer

JSON_KEYS = {"arch", "params", "seed", "epochs", "test_accuracy", "val_accuracy", "train_seconds",
             "compile_seconds", "images_per_second", "device", "jax_version"}


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


def test_record_recipe_is_the_one_chosen_on_validation():
    record = RECIPES["record"]
    assert record == RECIPES["gap4"] and cli.parse(["--recipe", "record"])[1] == record
    assert (record.arch, record.epochs, record.val_size, record.batch_size, record.lr, record.b1, record.b2) == (
        "gap4", 1, 0, 32, 0.015, 0.7, 0.9)
    assert (record.schedule, record.warmup, record.final_lr, record.label_smoothing, record.ema) == (
        "linear", 0.2, 0.0, 0.1, None)
    assert (record.weight_decay, record.clip_norm, record.rotate, record.translate, record.crop_p) == (
        1e-4, 1.0, 0.0, 0.0, 0.0)


def test_seed_zoo_recipes_are_the_documented_ones():
    conv6, under20k, res8k = RECIPES["conv6"], RECIPES["under20k"], RECIPES["res8k"]
    crop_and_rotate = (15.0, 0.1, 22, 0.0, 0.0)
    assert (conv6.batch_size, conv6.optimizer, conv6.lr, conv6.epochs, conv6.schedule) == (128, "adam", 0.002, 1,
                                                                                          "constant")
    assert (conv6.rotate, conv6.crop_p, conv6.crop_size, conv6.translate, conv6.scale) == crop_and_rotate
    assert (under20k.batch_size, under20k.optimizer, under20k.lr, under20k.epochs) == (128, "adam", 1e-3, 20)
    assert (under20k.schedule, under20k.decay_epochs, under20k.decay_factor) == ("step", 15, 0.1)
    assert (under20k.rotate, under20k.crop_p, under20k.crop_size, under20k.translate, under20k.scale) == crop_and_rotate
    assert (res8k.batch_size, res8k.optimizer, res8k.lr, res8k.momentum, res8k.weight_decay, res8k.schedule) == (
        32, "sgd", 0.1, 0.9, 2e-4, "onecycle")
    assert (res8k.dropout, res8k.epochs, res8k.rotate, res8k.translate, res8k.scale, res8k.crop_p) == (
        0.03, 1, 15.0, 0.1, 0.1, 0.0)
    assert all(r.val_size == 0 for r in (conv6, under20k, res8k))  # the write-ups train on all 60,000


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "use a batch size of at least 1"),
    (["--batch-size", "54001"], "batch size 54001 is larger than the 54000 training images"),
    (["--lr", "0"], "learning rate is 0.0: it must be positive"),
    (["--lr", "-0.1"], "learning rate is -0.1: it must be positive"),
    (["--epochs", "0"], "train for at least 1 epoch"),
    (["--dropout", "1"], "a rate must lie in [0, 1)"),
    (["--val-size", "60000"], "val_size is 60000 but the training set holds only 60000 images"),
    (["--clip-norm", "0"], "use a positive norm, or none"),
    (["--arch", "conv6", "--dropout", "0.1"], "conv6 has no dropout layer: leave dropout unset (none)"),
    (["--crop-p", "1.5"], "crop_p is 1.5: a probability must lie in [0, 1]"),
    (["--rotate", "-5"], "rotate is -5.0: use an angle in [0, 180] degrees"),
    (["--crop-size", "40"], "crop_size is 40: use a crop side between 1 and 28 pixels"),
    (["--schedule", "step", "--decay-factor", "0"], "decay_factor is 0.0: it must lie in (0, 1]"),
    (["--train-size", "0"], "train on at least 1 image, or none"),
    (["--train-size", "54001"], "train_size is 54001 but 54000 training images are left after the validation split"),
    (["--train-size", "32"], "batch size 64 is larger than the 32 training images"),
    (["--lr", "inf"], "lr is inf: every number of a run must be finite; give --lr a finite value"),
    (["--std", "inf"], "std is inf: every number of a run must be finite; give --std a finite value"),
    (["--mean", "nan"], "mean is nan: every number of a run must be finite; give --mean a finite value"),
    (["--seed", "99999999999999999999"], "seed is 99999999999999999999: use a seed in [0, 2**32)"),
    (["--seed", "-1"], "seed is -1: use a seed in [0, 2**32)"),
    (["--json", "/no/such/dir/r.json"], "--json /no/such/dir/r.json: the folder /no/such/dir does not exist"),
    (["--json", "/tmp"], "--json /tmp: /tmp is a folder: name a file in it, e.g. /tmp/run.json"),
    (["--metrics", "/no/such/m.jsonl"], "--metrics /no/such/m.jsonl: the folder /no/such does not exist"),
    (["--plot", "/no/such/p.png"], "--plot /no/such/p.png: the folder /no/such does not exist"),
    (["--checkpoint-dir", "/no/such/run"], "--checkpoint-dir /no/such/run: the folder /no/such does not exist"),
    (["--checkpoint-dir", "/etc/hostname"], "--checkpoint-dir /etc/hostname: /etc/hostname is a file, not a folder"),
    (["--resume"], "--resume continues the run kept in a folder: give that folder with --checkpoint-dir DIR"),
    (["--ema", "1"], "ema is 1.0: use a decay in (0, 1)"),
    (["--label-smoothing", "1"], "label_smoothing is 1.0: it must lie in [0, 1)"),
    (["--schedule", "onecycle", "--b1", "0.7"], "the onecycle schedule cycles Adam's beta1"),
    (["--schedule", "step", "--warmup", "0.1"], "the step schedule has none: use cosine or linear, or warmup 0"),
])
def test_impossible_hyper_parameters_exit_2_with_one_paragraph(flags, message, mnist_dir, capsys):
    assert main(["--recipe", "gap", "--data-dir", str(mnist_dir), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("jaxmnist: error: Invalid configuration:"), err
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


def test_the_compiled_initialisation_builds_what_building_op_by_op_does():
    """`init_run` builds the model and optimiser in one compiled program (the seed an argument);
    every array, the dropout key included, is the one eager construction gives."""
    config = dataclasses.replace(RECIPES["gap"], seed=2**32 - 1)  # the largest seed: a uint32, not an int32
    _, _, state, _ = init_run(config, steps_per_epoch=10)
    params_key, dropout_key, _, _ = seed_streams(config.seed)
    model = build(config.arch, dropout=config.dropout, rngs=nnx.Rngs(params=params_key, dropout=dropout_key))
    eager = nnx.state((model, nnx.Optimizer(model, make_optimizer(config, 10), wrt=nnx.Param)))

    def values(tree):
        return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
                for x in jax.tree.leaves(tree)]

    assert all(np.array_equal(a, b) for a, b in zip(values(state), values(eager), strict=True))


def test_one_evaluation_program_serves_every_split_size(mnist):
    config = RECIPES["gap"]
    _, eval_graphdef, state, _ = init_run(config, steps_per_epoch=10)
    evaluator = Evaluator(config, eval_graphdef, state, sharding.make_mesh(1), [530, 400])
    assert evaluator.block == 200  # 530 -> 6 batches of 100, 400 -> 4: blocks of gcd(6, 4) = 2 batches
    test = mnist.test.take(np.arange(530))
    split = evaluator.put(test)
    assert len(split.blocks) == 3 and split.n == 530
    whole = logits_step(eval_graphdef, state, test.images_NHW, mean=config.mean, std=config.std,
                        split=sharding.batch_split(sharding.make_mesh(1)))
    np.testing.assert_allclose(evaluator.logits(state, split), whole, rtol=1e-5, atol=1e-5)
    assert evaluator.accuracy(state, split) == float(np.mean(np.asarray(whole).argmax(-1) == test.labels_N))


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
    subset = small(mnist, 300, 100)
    trainer = Trainer(dataclasses.replace(RECIPES["gap"], val_size=0), subset.train, subset.test)

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


def test_several_epochs_reshuffle_decay_and_report_each_epoch(mnist):
    """The under20k recipe (step decay, augmentation) shortened to 3 epochs of 2,048 images."""
    config = dataclasses.replace(RECIPES["under20k"], epochs=3, decay_epochs=2, val_size=512)
    result = fit(config, small(mnist, 2_560, 1_000), progress=False)
    assert [e.epoch for e in result.epochs] == [1, 2, 3]
    assert all(0 < e.val_accuracy <= 1 and 0 < e.test_accuracy <= 1 for e in result.epochs)
    assert result.epochs[-1].test_accuracy > result.epochs[0].test_accuracy
    per_epoch = report.summary(result)["per_epoch"]
    assert [e["test_accuracy"] for e in per_epoch] == [e.test_accuracy for e in result.epochs]
    orders = [np.asarray(epoch_order(0, epoch, 2_048)) for epoch in range(3)]
    assert all(sorted(o) == list(range(2_048)) for o in orders) and not np.array_equal(orders[0], orders[1])


@pytest.mark.parametrize("arch, floor", [("gap", 0.975), ("fc", 0.96), ("conv6", 0.95), ("res8k", 0.95)])
def test_one_real_epoch_from_the_command_line(arch, floor, mnist_dir, tmp_path):
    out = tmp_path / "summary.json"
    run = subprocess.run([sys.executable, "-m", "jaxmnist.train", "--arch", arch, "--data-dir", str(mnist_dir),
                          "--json", str(out), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    summary = json.loads(out.read_text())
    assert JSON_KEYS <= set(summary)
    assert summary["arch"] == arch and summary["epochs"] == 1 and summary["seed"] == 0
    assert summary["params"] == DOCUMENTED_PARAMS[arch]
    assert summary["test_accuracy"] >= floor, summary
    if arch == "gap":
        assert 0.9 < summary["val_accuracy"] <= 1
        assert summary["train_images"] == 54_000
    else:
        assert summary["val_accuracy"] is None and summary["train_images"] == 60_000
    assert summary["train_seconds"] > 0 and summary["compile_seconds"] > 0
    assert summary["images_per_second"] == pytest.approx(summary["train_images"] / summary["train_seconds"])
    assert f"{summary['test_accuracy']:.2%}" in run.stdout



def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
    logits = jax.random.normal(jax.random.key(0), (4, 10))
    labels = jnp.array([0, 3, 9, 3])
    plain, _ = loss_fn(lambda x: logits, None, labels)
    smoothed, _ = loss_fn(lambda x: logits, None, labels, label_smoothing=0.1)
    targets = 0.9 * jax.nn.one_hot(labels, 10) + 0.01
    np.testing.assert_allclose(smoothed, -(targets * jax.nn.log_softmax(logits)).sum(-1).mean(), rtol=1e-6)
    np.testing.assert_allclose(plain, -jax.nn.log_softmax(logits)[jnp.arange(4), labels].mean(), rtol=1e-6)


def test_evaluation_uses_the_weight_average_where_the_recipe_keeps_one(mnist):
    """At initialisation the average is the weights; zeroing the average (not the weights) makes
    every logit 0, so every prediction is class 0."""
    config = dataclasses.replace(RECIPES["record"], ema=0.99)
    images, labels = mnist.test.images_NHW[:500], mnist.test.labels_N[:500]
    split = sharding.batch_split(sharding.make_mesh(1))
    correct = {}
    for ema in (None, 0.99):
        _, eval_graphdef, state, _ = init_run(dataclasses.replace(config, ema=ema), steps_per_epoch=10)
        step = functools.partial(logits_step, eval_graphdef, mean=config.mean, std=config.std, split=split)
        correct[ema] = int((np.asarray(step(eval_state(eval_graphdef, state), images)).argmax(-1) == labels).sum())
    assert correct[None] == correct[0.99] != int((labels == 0).sum())
    model, optimizer = nnx.merge(eval_graphdef, state)
    average = averaged_params(optimizer.opt_state)
    for variable in jax.tree.leaves(average, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        variable[...] = jnp.zeros_like(variable[...])
    assert np.abs(model.conv1.kernel[...]).sum() > 0
    zeroed = step(eval_state(eval_graphdef, nnx.split((model, optimizer))[1]), images)
    assert int((np.asarray(zeroed).argmax(-1) == labels).sum()) == int((labels == 0).sum())


def test_record_recipe_learns_on_a_subset_and_is_reproducible(mnist):
    config = dataclasses.replace(RECIPES["record"], val_size=500, train_size=2_000)
    subset = small(mnist, 3_000, 1_000)
    first, again = fit(config, subset, progress=False), fit(config, subset, progress=False)
    assert (first.val_accuracy, first.test_accuracy) == (again.val_accuracy, again.test_accuracy)
    assert first.params == DOCUMENTED_PARAMS["gap4"] and first.val_accuracy > 0.85
