"""A run's folder: everything a user keeps from a training run, and what resumes it.

    DIR/config.json       the run's Config, written when it starts
    DIR/checkpoints/N/    orbax checkpoints after global step N: the model and optimiser state
                          (`nnx.state`), the epoch's running metrics, and where the run stands
    DIR/metrics.jsonl     the metrics log: one object per progress redraw and one per epoch
    DIR/summary.json      the summary, when the run finishes

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact; it keeps the newest `keep`.
Restoring lays the arrays out as the target's shardings say, so a checkpoint saved on 8 devices
restores onto 1 and the other way round.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import jax

from jaxmnist.config import Config
from jaxmnist.errors import ConfigError
from jaxmnist.results import EpochResult

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINTS = "config.json", "metrics.jsonl", "summary.json", "checkpoints"


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run stands: in epoch `epoch` (0-based), `step` steps done, after the finished `epochs`.

    `train_seconds` is the time already spent on the current epoch's steps (before an interruption).
    """

    epoch: int = 0
    step: int = 0
    epochs: tuple[EpochResult, ...] = ()
    train_seconds: float = 0.0

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "train_seconds": self.train_seconds,
                "epochs": [dataclasses.asdict(e) for e in self.epochs]}

    @classmethod
    def from_json(cls, d: dict) -> Position:
        return cls(d["epoch"], d["step"], tuple(EpochResult(**e) for e in d["epochs"]), d["train_seconds"])


@dataclasses.dataclass(frozen=True)
class Saved:
    """The newest checkpoint of a run folder, without its arrays."""

    config: Config
    position: Position
    global_step: int


def _orbax():
    """`orbax.checkpoint`, imported on first use: it costs every start 0.12 s, and most runs keep no folder."""
    import orbax.checkpoint as ocp

    return ocp


class RunDir:
    """A run folder (`--checkpoint-dir`): its checkpoints through one orbax `CheckpointManager`."""

    def __init__(self, path: str | Path, keep: int = 3):
        self.path = Path(path).expanduser()
        self.keep = keep
        self._manager: ocp.CheckpointManager | None = None

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            ocp = _orbax()
            # Synchronous saves: a checkpoint is complete when `save` returns, before the next chunk
            # (a save of a 25,000-parameter model takes ~0.1 s).
            options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                                   enable_async_checkpointing=False)
            self._manager = ocp.CheckpointManager(self.path.resolve() / CHECKPOINTS, options=options)
        return self._manager

    def file(self, name: str) -> Path:
        return self.path / name

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINTS).is_dir() and self.manager.latest_step() is not None

    def start(self, config: Config) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.file(CONFIG_FILE), dataclasses.asdict(config))

    def save(self, global_step: int, config: Config, position: Position, arrays) -> None:
        """Checkpoints `arrays` (a pytree: model and optimiser state, running metrics) at `global_step`,
        unless that step is saved already (an interruption right after an epoch's checkpoint)."""
        if global_step in self.manager.all_steps():
            return
        progress = {"config": dataclasses.asdict(config), "position": position.to_json()}
        ocp = _orbax()
        self.manager.save(global_step, args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                                               progress=ocp.args.JsonSave(progress)), force=True)

    def latest(self) -> Saved:
        """The newest checkpoint's configuration and position; ConfigError if there is none."""
        step = self.manager.latest_step() if (self.path / CHECKPOINTS).is_dir() else None
        if step is None:
            raise ConfigError(f"Invalid configuration: {self.path} holds no checkpoint: train with --checkpoint-dir "
                              f"{self.path} first, or point --checkpoint-dir at the folder a run wrote.")
        ocp = _orbax()
        progress = self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore())).progress
        return Saved(Config(**progress["config"]), Position.from_json(progress["position"]), step)

    def restore(self, global_step: int, target):
        """The arrays of checkpoint `global_step`, shaped and laid out as `target` (a pytree of arrays)."""
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
        ocp = _orbax()
        return self.manager.restore(global_step, args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(abstract))).arrays

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()


# The fields a resumed run may change: where the data is and what runs it, not the mathematics.
RESUMABLE = ("data_dir", "verify_checksums", "devices", "distributed")


def resume_config(saved: Saved, requested: Config, explicit: set[str], path: Path) -> Config:
    """The checkpoint's configuration, with the `RESUMABLE` fields the command line set.

    Raises:
        ConfigError: naming each field where `requested` (its `explicit` fields) contradicts the checkpoint.
    """
    clash = sorted(f for f in explicit if f not in RESUMABLE and getattr(requested, f) != getattr(saved.config, f))
    if clash:
        what = ", ".join(f"{f} {getattr(saved.config, f)!r}, not {getattr(requested, f)!r}" for f in clash)
        raise ConfigError(f"Invalid configuration: {path} holds a checkpoint of another run ({what}): resume it "
                          "without those flags (the checkpoint keeps its own configuration), or give a new run "
                          "another --checkpoint-dir.")
    return dataclasses.replace(saved.config, **{f: getattr(requested, f) for f in explicit if f in RESUMABLE})


class MetricsLog:
    """The metrics log: JSON lines, one object per progress redraw and one per epoch, each with its
    global `step`. A resumed run keeps the lines up to its checkpoint and logs the rest anew."""

    def __init__(self, path: str | Path, resumed_at: int | None = None):
        self.path = Path(path)
        kept = []
        if resumed_at is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resumed_at]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, **record) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Nothing to release: each write opens and closes the file, so that readers see every line at once."""


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_json(path: str | Path, value) -> None:
    """Writes `value` as indented JSON, atomically: a reader sees the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)
