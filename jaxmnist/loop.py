"""The epoch loop: `fit` trains a Config epoch by epoch, evaluating after each, with a progress bar,
the metrics log, checkpoints, the divergence guard and stopping when asked.

The compiled programs are `jaxmnist.programs`'; `jaxmnist.trainer` runs them on this process's
devices; the command line is `jaxmnist.train`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax

from jaxmnist import data, distributed
from jaxmnist.checkpoint import MetricsLog, Position, RunDir
from jaxmnist.config import Config
from jaxmnist.errors import Diverged, Interrupted
from jaxmnist.optim import make_schedule
from jaxmnist.results import EpochResult, Result
from jaxmnist.tensorboard import TensorBoardLog
from jaxmnist.trainer import Trainer

# A chunk's mean loss above this, or a non-finite one, stops the run as diverged: guessing uniformly
# among 10 classes costs 2.3, so no run that learns comes near it, and one that blew up (--lr 1e6
# reaches ~1e13 while its accuracy sits at chance) is caught before it reports a meaningless score.
DIVERGED_LOSS = 1_000.0


def fit(config: Config, dataset: data.Dataset | None = None, *, progress: bool = True, run_dir: RunDir | None = None,
        resume: bool = False, metrics_path: str | Path | None = None, tensorboard_dir: str | Path | None = None,
        should_stop: Callable[[], bool] = lambda: False) -> Result:
    """Trains `config` and evaluates after every epoch.

    Args:
        config: the run; validated here.
        dataset: already loaded data (else loaded as `config` says).
        progress: draw a progress bar with running loss and accuracy on stderr (process 0 only).
        run_dir: checkpoint after every epoch (and when stopped) into this run folder (the caller closes it).
        resume: continue from `run_dir`'s newest intact checkpoint, whose configuration `config` must be
            (from the beginning when none is intact; damaged ones are moved aside, and each is named).
        metrics_path: write the metrics log here (JSON lines).
        tensorboard_dir: write the metrics log's scalars here too, as TensorBoard event files (the
            tensorboard extra).
        should_stop: polled between chunks of steps; when true, the run checkpoints and stops.

    Raises:
        JaxMnistError: for an invalid configuration or unusable data.
        Diverged: the loss became non-finite (the last finite state is checkpointed, given a run folder).
        Interrupted: `should_stop` said so.
    """
    config.validate()
    distributed.initialize(config.distributed)
    start = time.perf_counter()
    if dataset is None:
        dataset = data.load(config.dataset, config.data_dir, verify_checksums=config.verify_checksums)
    config.validate_sizes(len(dataset.train))
    data_seconds = time.perf_counter() - start
    trainer = Trainer(config, dataset.train, dataset.test)
    result = _Run(trainer, config, run_dir, resume, metrics_path, tensorboard_dir, progress, should_stop).train()
    return dataclasses.replace(result, data_seconds=data_seconds, init_seconds=trainer.init_seconds)


class _Run:
    """The epochs of one `fit`: progress, metrics log, checkpoints, the divergence guard and stopping."""

    def __init__(self, trainer: Trainer, config: Config, run_dir: RunDir | None, resume: bool,
                 metrics_path: str | Path | None, tensorboard_dir: str | Path | None, progress: bool,
                 should_stop: Callable[[], bool]):
        self.trainer, self.config, self.run_dir, self.should_stop = trainer, config, run_dir, should_stop
        self.main = distributed.is_main_process()
        self.progress = progress and self.main
        self.position, self.metrics = Position(), trainer.zero_metrics()
        resumed = resume and self._resume()
        if run_dir is not None:
            run_dir.start(config)
        self.schedule = make_schedule(config, trainer.steps_per_epoch)
        # Each gets every record. `train` closes them however the run ends: the event writer buffers.
        self.sinks: list[MetricsLog | TensorBoardLog] = []
        if self.main and metrics_path:
            self.sinks.append(MetricsLog(metrics_path, self.global_step() if resumed else None))
        if self.main and tensorboard_dir:
            self.sinks.append(TensorBoardLog(tensorboard_dir, self.global_step() if resumed else None))
        self.started = time.perf_counter()

    def _resume(self) -> bool:
        """Continues from the run folder's newest intact checkpoint, saying which (and which damaged
        ones it passed over); False when there is none, and the run starts from the beginning."""
        run_dir, say = self.run_dir, self._say
        saved, arrays, skipped = run_dir.newest_intact(self.trainer.checkpoint_arrays(self.metrics))
        for s in skipped:
            say(f"checkpoint {s.global_step} in {run_dir.path} is damaged ({s.problem}): passed over, and moved to "
                f"{s.moved_to}.")
        if saved is None:
            say(f"{run_dir.path} keeps this run but no intact checkpoint of it: starting it from the beginning.")
            return False
        self.trainer.state, self.metrics, self.position = arrays["state"], arrays["metrics"], saved.position
        done = "all its epochs done" if saved.position.epoch == self.config.epochs else \
            f"epoch {saved.position.epoch + 1}, step {saved.position.step}"
        say(f"continuing the run in {run_dir.path} from checkpoint {saved.global_step} ({done}).")
        return True

    def _say(self, line: str) -> None:
        if self.main:
            print(f"jaxmnist: {line}", file=sys.stderr)

    def global_step(self) -> int:
        return self.position.epoch * self.trainer.steps_per_epoch + self.position.step

    def train(self) -> Result:
        try:
            return self._train()
        finally:
            for sink in self.sinks:
                sink.close()

    def _train(self) -> Result:
        trainer, config = self.trainer, self.config
        if self.should_stop():
            raise Interrupted("stopped before the first step: nothing was trained")
        for epoch in range(self.position.epoch, config.epochs):
            bar = _progress_bar(trainer.steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", self.position.step) \
                if self.progress else None
            loss, accuracy, seconds = self._train_epoch(epoch, bar)
            start = time.perf_counter()
            test_accuracy = trainer.evaluate(trainer.eval_splits[0])
            val_accuracy = trainer.evaluate(trainer.eval_splits[1]) if len(trainer.eval_splits) > 1 else None
            result = EpochResult(epoch + 1, loss, accuracy, val_accuracy, test_accuracy, seconds,
                                 time.perf_counter() - start)
            self.position = Position(epoch + 1, 0, (*self.position.epochs, result))
            self.metrics = trainer.zero_metrics()
            self._save()
            self._log(epoch=epoch + 1, step=self.global_step(), train_loss=loss, train_accuracy=accuracy,
                      val_accuracy=val_accuracy, test_accuracy=test_accuracy)
            if bar is not None:
                val_text = "" if val_accuracy is None else f" val_acc={val_accuracy:.4f}"
                bar.set_postfix_str(f"loss={loss:.4f} acc={accuracy:.4f}{val_text} test_acc={test_accuracy:.4f}")
                bar.close()
            if epoch + 1 < config.epochs and self.should_stop():
                raise Interrupted(self._stopped_text())
        return Result(config, trainer.params, trainer.n_train, self.position.epochs, trainer.compile_seconds)

    def _train_epoch(self, epoch: int, bar) -> tuple[float, float, float]:
        trainer = self.trainer
        start, done_before = time.perf_counter(), self.position.train_seconds
        logged = (self.position.step, *(float(x) for x in jax.device_get(self.metrics)))
        checked = logged
        for steps, metrics in trainer.chunks(epoch, self.position.step, self.metrics, keep_last=bool(self.run_dir)):
            loss_sum, correct, n = (float(x) for x in jax.device_get(metrics))
            chunk_loss = (loss_sum - checked[1]) / (n - checked[3])
            if not chunk_loss <= DIVERGED_LOSS:  # NaN too
                self._diverged(epoch, steps, chunk_loss)
            checked = (steps, loss_sum, correct, n)
            self.metrics = metrics
            self.position = dataclasses.replace(self.position, step=steps,
                                                train_seconds=done_before + time.perf_counter() - start)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{correct / n:.4f}", refresh=False)
                bar.update(steps - bar.n)
            # The epoch's smaller last batch is one step of its own program: logged alone, its handful of
            # images would plot as a point of its own (noise), so it joins the chunk before it, and the
            # run stops only after it.
            if steps == trainer.full_steps < trainer.steps_per_epoch:
                continue
            if self.sinks:  # the schedule runs op by op: a few compilations a run without a log skips
                images = n - logged[3]
                self._log(epoch=epoch + 1, step=self.global_step(), loss=(loss_sum - logged[1]) / images,
                          accuracy=(correct - logged[2]) / images, lr=float(self.schedule(self.global_step() - 1)),
                          seconds=time.perf_counter() - self.started)
            logged = checked
            if steps < trainer.steps_per_epoch and self.should_stop():
                self._save()
                raise Interrupted(self._stopped_text())
        loss_sum, correct, n = checked[1:]
        return loss_sum / n, correct / n, self.position.train_seconds

    def _diverged(self, epoch: int, steps: int, loss: float) -> None:
        first = self.trainer.last[2] if self.run_dir else self.position.step
        where = f"steps {first + 1}-{steps} of epoch {epoch + 1}"
        saved = ""
        if self.run_dir is not None:
            state, self.metrics, step = self.trainer.last
            self.trainer.state, self.position = state, dataclasses.replace(self.position, step=step)
            self._save()
            saved = (f" The last finite state (step {step} of epoch {epoch + 1}) is checkpointed in "
                     f"{self.run_dir.path}; a resumed run would diverge again, so start anew with the lower rate.")
        raise Diverged(f"Training diverged: the mean loss over {where} was {loss:.3g} (over {DIVERGED_LOSS:g}, or "
                       f"not finite; learning rate {self.config.lr:g}). Lower it, e.g. --lr {self.config.lr / 10:g}, "
                       f"or check that the normalisation (--mean, --std) suits the data.{saved}")

    def _save(self) -> None:
        if self.run_dir is not None:
            self.run_dir.save(self.global_step(), self.config, self.position,
                              self.trainer.checkpoint_arrays(self.metrics))

    def _log(self, **record) -> None:
        for sink in self.sinks:
            sink.write(**record)

    def _stopped_text(self) -> str:
        where = f"after step {self.position.step} of epoch {self.position.epoch + 1}" if self.position.step else \
            f"after epoch {self.position.epoch}"
        if self.run_dir is None:
            return f"stopped {where}; nothing was saved (train with --checkpoint-dir DIR to keep progress)."
        return (f"stopped {where}; checkpoint saved in {self.run_dir.path}: resume with "
                f"`python -m jaxmnist.train --resume --checkpoint-dir {self.run_dir.path}`")


def _progress_bar(total: int, desc: str, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)
