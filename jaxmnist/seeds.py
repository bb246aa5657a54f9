"""Several seeds of one recipe trained side by side, in one compiled program.

`fit_seeds(config, seeds)` computes what `fit(replace(config, seed=s))` computes for each seed
(the same initial weights, dropout masks, train/validation split, image order and augmentation,
up to float summation order): `trainer.Trainer` with `seeds` gives each run's state a leading seed
axis and `jax.vmap`s its programs, the data shared, so one program step advances every run by one
step. On an accelerator that fills a device the size of one tiny model leaves mostly idle; on two
CPU cores the convolutions are already compute-bound and the gain is small or negative
(benchmarks/accuracy.py --vmap measures it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from jaxmnist import data
from jaxmnist.config import Config
from jaxmnist.results import EpochResult, Result
from jaxmnist.trainer import Trainer


def fit_seeds(config: Config, seeds: Sequence[int], dataset: data.Dataset | None = None) -> list[Result]:
    """Trains `config` once per seed, all runs side by side on one device; one `Result` per seed.

    Each result's `train_seconds` is the wall time of the joint epochs (all runs together) and
    its `compile_seconds` that of the joint program.
    """
    config.validate()
    if dataset is None:
        dataset = data.load(config.dataset, config.data_dir, verify_checksums=config.verify_checksums)
    config.validate_sizes(len(dataset.train))
    trainer = Trainer(config, dataset.train, dataset.test, seeds)
    per_seed = [[] for _ in trainer.seeds]
    for epoch in range(config.epochs):
        losses, accuracies, seconds = trainer.train_epoch(epoch)
        start = time.perf_counter()
        test, *val = (trainer.evaluate(split) for split in trainer.eval_splits)
        eval_seconds = time.perf_counter() - start
        for i, epochs in enumerate(per_seed):
            epochs.append(EpochResult(epoch + 1, float(losses[i]), float(accuracies[i]),
                                      float(val[0][i]) if val else None, float(test[i]), seconds, eval_seconds))
    return [Result(dataclasses.replace(config, seed=seed), trainer.params, trainer.n_train, tuple(epochs),
                   trainer.compile_seconds) for seed, epochs in zip(trainer.seeds, per_seed)]
