"""One training program for 1 or N devices: 8 fake CPU devices stand in for 8 chips (a Kaggle TPU v5e-8)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxmnist.recipes import RECIPES

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def multidevice(mnist_dir):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    run = subprocess.run([sys.executable, str(HERE / "multidevice_run.py"), str(mnist_dir), "--epoch"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_eight_devices_are_visible_and_used(multidevice):
    assert multidevice["device_count"] == 8
    assert multidevice["eight"]["state_devices"] == 8 and multidevice["one"]["state_devices"] == 1
    # Batch statistics and gradients over a batch split 8 ways need cross-device reductions.
    assert multidevice["eight"]["hlo_all_reduce"] and not multidevice["one"]["hlo_all_reduce"]
    # Each device's compiled program normalises and convolves its own 8 of the 64 images.
    assert multidevice["eight"]["hlo_image_batches"] == ["f32[8,28,28,1]"]
    assert multidevice["one"]["hlo_image_batches"] == ["f32[64,28,28,1]"]
    assert multidevice["put_matches_device_put"]  # the multi-host-ready transfer (sharding.put)


def test_one_and_eight_devices_agree_step_by_step(multidevice):
    """Only the float summation order differs (a global-batch reduction split 8 ways). Per-device
    BatchNorm statistics, a wrong gradient average or unequal dropout masks would be off by ~1e-2
    from the first steps.

    The order noise (~1e-7) stays there until it flips a near-tie in a max pool or a ReLU, which
    routes one image's gradient through another pixel: a jump of about lr x that gradient, which
    training then carries along. How far apart the parameters are after 100 steps (6,400 images,
    seed 0) therefore depends on the optimiser, measured with jax 0.10.2 on XLA:CPU:
    plain SGD lr 0.005 (used here) 1.5e-6; SGD lr 0.01 2.3e-4 (a flip at step 31 took the
    difference from 6e-8 to 7.8e-6); SGD lr 0.005 momentum 0.9 8.8e-4; Adam lr 1e-3 8.3e-3; the
    gap recipe's Adam 4.8e-2. Adam cannot meet 1e-4: it scales every coordinate's step to about
    lr whatever the size of its gradient, so a flip moves weights by ~lr at once. Losses agree to
    2.3e-7 relative over the 100 SGD steps."""
    one, eight = multidevice["one"], multidevice["eight"]
    np.testing.assert_allclose(eight["losses"][:10], one["losses"][:10], rtol=1e-5, atol=0)
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-4, atol=0)
    assert np.mean(one["losses"][-10:]) < one["losses"][0] - 0.15, "100 steps should learn something"
    for a, b in zip(one["params_after_100"], eight["params_after_100"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4, rtol=0)


def test_one_and_eight_devices_reach_the_same_accuracy_after_an_epoch(multidevice):
    epoch = multidevice["epoch"]
    assert epoch["1"] >= 0.98 and abs(epoch["8"] - epoch["1"]) <= 0.002, epoch


def test_impossible_device_requests_are_refused_naming_the_fix(multidevice):
    too_many, indivisible = multidevice["errors"]
    assert "16 devices requested but 8 cpu device(s) are visible: pass --devices between 1 and 8" in too_many
    assert "batch size of 60 images does not divide across 8 devices" in indivisible


def test_the_scaled_preset_is_gap_at_64_images_per_device_of_eight():
    b512, gap = RECIPES["gap-b512"], RECIPES["gap"]
    assert dataclasses.replace(b512, batch_size=64, epochs=1, lr=gap.lr, final_lr=gap.final_lr) == gap
    assert b512.batch_size == 8 * 64 and (60_000 - b512.val_size) % b512.batch_size % 8 == 0  # last batch: 240
    assert b512.final_lr / b512.lr == pytest.approx(gap.final_lr / gap.lr)
