"""Seeds side by side (`jax.vmap` over runs) compute what the same seeds compute one by one."""

import dataclasses

import numpy as np
import pytest

from jaxmnist import data
from jaxmnist.loop import fit
from jaxmnist.recipes import RECIPES
from jaxmnist.seeds import fit_seeds


@pytest.mark.parametrize("arch, val_size", [("fc", 400), ("res8k", 0)])
def test_side_by_side_runs_match_one_by_one_runs(arch, val_size, mnist):
    """fc: a validation split of its own per seed, dropout and Adam; res8k: BatchNorm, augmentation,
    dropout and the one-cycle schedule, each drawn per seed. Only float summation order may differ."""
    subset = data.Dataset("mnist", mnist.train.take(np.arange(2_400)), mnist.test.take(np.arange(1_000)), "subset")
    config = dataclasses.replace(RECIPES[arch], val_size=val_size, epochs=1)
    together = fit_seeds(config, [0, 1], subset)
    for result in together:
        alone = fit(result.config, subset, progress=False)
        assert result.params == alone.params and result.train_images == alone.train_images
        for a, b in zip(result.epochs, alone.epochs):
            assert a.train_loss == pytest.approx(b.train_loss, rel=2e-3)
            assert a.test_accuracy == pytest.approx(b.test_accuracy, abs=0.02)
            assert (a.val_accuracy is None) == (b.val_accuracy is None)
            if a.val_accuracy is not None:
                assert a.val_accuracy == pytest.approx(b.val_accuracy, abs=0.03)
    assert together[0].epochs[-1].test_accuracy != together[1].epochs[-1].test_accuracy or \
        together[0].epochs[-1].train_loss != together[1].epochs[-1].train_loss
