"""A run's folder: everything a user keeps from a training run, and what resumes it.

    DIR/config.json       the run's Config, written when it starts
    DIR/checkpoints/N/    orbax checkpoints after global step N: the model and optimiser state
                          (`nnx.state`), the epoch's running metrics, and where the run stands
    DIR/metrics.jsonl     the metrics log: one object per progress redraw and one per epoch
    DIR/summary.json      the summary, when the run finishes

    DIR/damaged/N/        checkpoints found damaged when the run resumed, moved out of its way
    DIR/writer.lock, .json  the lock of the one process writing the folder, and who that is

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact; it keeps the newest `keep`. Each
checkpoint also records the sha256 of every array and of its metadata (an orbax item of its
own) and, once saved, of every file (FILE_LIST). Every read checks the files first, then the
arrays it restored: a flipped bit, a truncated or a missing file is refused by name, never
computed with.
Restoring lays the arrays out as the target's shardings say, so a checkpoint saved on 8 devices
restores onto 1 and the other way round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np

from jaxmnist import distributed
from jaxmnist.config import Config
from jaxmnist.errors import CheckpointError, ConfigError
from jaxmnist.results import EpochResult
from jaxmnist.writer_lock import WriterLock

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINTS = "config.json", "metrics.jsonl", "summary.json", "checkpoints"
DAMAGED = "damaged"
FILE_LIST = "files.sha256.json"  # in each checkpoint's folder: every file's size and sha256


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
    """A checkpoint of a run folder, without its arrays: what its metadata says, verified.

    `checksums` holds the sha256 of each array saved, by its path in the saved tree; `restore`
    checks the arrays it reads against them.
    """

    config: Config
    position: Position
    global_step: int
    checksums: dict[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)


class Damaged(CheckpointError):
    """Checkpoint `step` cannot be trusted: `problem` says why."""

    def __init__(self, step: int, problem: str, message: str):
        super().__init__(message)
        self.step, self.problem = step, problem


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A damaged checkpoint passed over on resume, and where it was moved."""

    global_step: int
    problem: str
    moved_to: Path


def _orbax():
    """`orbax.checkpoint`, imported on use: it costs every start 0.12 s, and most runs keep no folder."""
    import orbax.checkpoint as ocp

    return ocp


def checksums(tree) -> dict[str, str]:
    """The sha256 of each array of `tree` (its dtype, shape and bytes), keyed by its path in the tree.

    The arrays are replicated, so each process hashes the copy it holds.
    """
    def digest(x) -> str:
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        host = np.ascontiguousarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)
        h = hashlib.sha256(f"{host.dtype.str}{host.shape}".encode())
        h.update(host.tobytes())
        return h.hexdigest()

    return {jax.tree_util.keystr(path): digest(x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _json_sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _first_line(e: Exception) -> str:
    """An exception as one short line, from its root cause: orbax wraps TensorStore's precise error
    ("OUT_OF_RANGE: ... Requested byte range ... is not valid") in a generic one dozens of lines long."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def file_digests(folder: Path) -> dict[str, list]:
    """[size, sha256] of every file under `folder` but the list itself, by its path in `folder`."""
    return {str(p.relative_to(folder)): [p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()]
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != FILE_LIST}


class RunDir:
    """A run folder (`--checkpoint-dir`): its checkpoints through one orbax `CheckpointManager`.

    Reading needs nothing; writing (`start`, `save`) needs the folder's writer lock, which `lock`
    takes and `close` releases. Every checkpoint records checksums of its arrays and of its
    metadata, and every read verifies them first: a damaged checkpoint raises CheckpointError.
    """

    def __init__(self, path: str | Path, keep: int = 3):
        self.path = Path(path).expanduser()
        self.keep = keep
        self._lock = WriterLock(self.path)
        self._writer = False
        self._manager: ocp.CheckpointManager | None = None

    def lock(self) -> str | None:
        """Makes this the folder's writer: the main process takes the folder's writer lock
        (FolderInUse if another run holds it). Returns a line to show when it took over the stale
        lock of a process that died."""
        if self._manager is not None:  # a reader's manager cannot write: open a writer's instead
            self._manager.close()
            self._manager = None
        self._writer = True
        return self._lock.acquire() if distributed.is_main_process() else None

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            ocp = _orbax()
            if self._writer:
                # Synchronous saves: a checkpoint is complete when `save` returns, before the next chunk
                # (a save of a 25,000-parameter model takes ~0.1 s). The only writer clears what a
                # process killed mid-save left behind, which would otherwise block saving that step again.
                options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                                       enable_async_checkpointing=False, cleanup_tmp_directories=True)
            else:  # a reader writes nothing, and never deletes what a running writer keeps
                options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                                       save_interval_steps=0, enable_async_checkpointing=False)
            absl = logging.getLogger("absl")
            level = absl.level
            absl.setLevel(logging.ERROR)  # orbax warns that a read-only manager's folder is read-only
            try:
                self._manager = ocp.CheckpointManager(self.path.resolve() / CHECKPOINTS, options=options)
            finally:
                absl.setLevel(level)
        return self._manager

    def file(self, name: str) -> Path:
        return self.path / name

    def steps(self) -> list[int]:
        """The global steps of the folder's checkpoints, newest first."""
        if not (self.path / CHECKPOINTS).is_dir():
            return []
        return sorted(self.manager.all_steps(), reverse=True)

    def _require_writer(self) -> None:
        if not self._writer:  # a library caller that did not `lock` first
            self.lock()

    def start(self, config: Config) -> None:
        self._require_writer()
        self.path.mkdir(parents=True, exist_ok=True)  # only the main process's lock created it
        write_json(self.file(CONFIG_FILE), dataclasses.asdict(config))

    def save(self, global_step: int, config: Config, position: Position, arrays) -> None:
        """Checkpoints `arrays` (a pytree: model and optimiser state, running metrics) at `global_step`,
        with the checksums that every restore verifies, unless that step is saved already (an
        interruption right after an epoch's checkpoint)."""
        self._require_writer()
        if global_step in self.manager.all_steps():
            return
        progress = {"config": dataclasses.asdict(config), "position": position.to_json()}
        integrity = {"progress_sha256": _json_sha256(progress), "arrays_sha256": checksums(arrays)}
        ocp = _orbax()
        self.manager.save(global_step, args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(arrays), progress=ocp.args.JsonSave(progress),
            integrity=ocp.args.JsonSave(integrity)), force=True)
        if distributed.is_main_process():
            folder = self._step_folder(global_step)
            write_json(folder / FILE_LIST, file_digests(folder))

    def _step_folder(self, step: int) -> Path:
        return self.path / CHECKPOINTS / str(step)

    def _check_files(self, step: int) -> None:
        """Checkpoint `step`'s files are the ones saved, byte for byte (Damaged naming the first that is not).

        Checked before orbax reads any of them: TensorStore reports a damaged file precisely, but the
        reads still in flight then fail one by one, each with a page of traceback on stderr."""
        folder = self._step_folder(step)
        try:
            recorded = json.loads((folder / FILE_LIST).read_text())
        except FileNotFoundError:
            raise self._damaged(step, f"it is incomplete: its list of files ({FILE_LIST}) is missing (the run "
                                      "was stopped while saving it, or jaxmnist wrote it before it kept "
                                      "checksums)") from None
        except ValueError as e:
            raise self._damaged(step, f"its list of files ({FILE_LIST}) is unreadable ({_first_line(e)})") from None
        for name, (size, digest) in recorded.items():
            path = folder / name
            if not path.is_file():
                raise self._damaged(step, f"its file {name} is missing")
            if path.stat().st_size != size:
                raise self._damaged(step, f"its file {name} is {path.stat().st_size:,} bytes long, not the {size:,} "
                                          "it was saved with (cut short, or overwritten)")
            if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                raise self._damaged(step, f"its file {name} does not match the checksum recorded when it was saved "
                                          "(changed bytes, such as a flipped bit)")

    def _damaged(self, step: int, problem: str) -> Damaged:
        others = [s for s in self.steps() if s != step]
        choose = (f"choose another checkpoint with --step N (this folder also holds steps "
                  f"{', '.join(map(str, others))})" if others else "this folder holds no other checkpoint")
        return Damaged(step, problem, f"Checkpoint {step} in {self.path} is damaged: {problem}. Nothing was computed "
                                      f"from it. To go on, {choose}, or re-run the training command, which resumes "
                                      "from the newest intact checkpoint and moves damaged ones aside.")

    def read(self, step: int | None = None) -> Saved:
        """Checkpoint `step`'s configuration and position (None: the newest checkpoint), verified.

        Raises:
            ConfigError: the folder holds no checkpoint, or none at `step`.
            CheckpointError: its metadata is damaged or missing.
        """
        steps = self.steps()
        if not steps:
            raise ConfigError(f"Invalid configuration: {self.path} holds no checkpoint: train with --checkpoint-dir "
                              f"{self.path} first, or point --checkpoint-dir at the folder a run wrote.")
        step = steps[0] if step is None else step
        if step not in steps:
            raise ConfigError(f"Invalid configuration: {self.path} holds no checkpoint at step {step}: choose one of "
                              f"{', '.join(map(str, steps))}.")
        self._check_files(step)
        ocp = _orbax()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore(),
                                                                          integrity=ocp.args.JsonRestore()))
            progress, integrity = restored.progress, restored.integrity
        except Exception as e:  # any failure to read is a checkpoint that cannot be trusted
            raise self._damaged(step, f"its metadata cannot be read ({_first_line(e)})") from None
        if not isinstance(integrity, dict) or "progress_sha256" not in integrity:
            raise self._damaged(step, "it records no checksums (a part is missing, or it was written before jaxmnist "
                                      "kept them)")
        if _json_sha256(progress) != integrity["progress_sha256"]:
            raise self._damaged(step, "its metadata (configuration and position) does not match the checksum "
                                      "recorded when it was saved")
        try:
            config = Config(**progress["config"])
            position = Position.from_json(progress["position"])
        except (KeyError, TypeError) as e:
            raise self._damaged(step, f"its metadata is not a jaxmnist run's ({_first_line(e)})") from None
        return Saved(config, position, step, integrity["arrays_sha256"])

    def restore(self, saved: Saved, target):
        """The arrays of checkpoint `saved`, shaped and laid out as `target` (a pytree of arrays),
        verified against the checksums recorded when they were saved (CheckpointError if not)."""
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
        ocp = _orbax()
        try:
            arrays = self.manager.restore(saved.global_step, args=ocp.args.Composite(
                arrays=ocp.args.StandardRestore(abstract))).arrays
            found = checksums(arrays)
        except Exception as e:  # its files passed `read`'s check: orbax or TensorStore cannot read them
            raise self._damaged(saved.global_step, f"its arrays cannot be read ({_first_line(e)})") from None
        wrong = sorted(k for k in saved.checksums.keys() | found.keys() if saved.checksums.get(k) != found.get(k))
        if wrong:
            raise self._damaged(saved.global_step, f"{len(wrong)} of its {len(found)} arrays ({', '.join(wrong[:3])}"
                                                   f"{', ...' if len(wrong) > 3 else ''}) do not match the checksums "
                                                   "recorded when it was saved")
        return arrays

    def newest_intact(self, target) -> tuple[Saved | None, object, list[Skipped]]:
        """The newest checkpoint that reads back intact and its arrays (restored into `target`, as
        `restore` does), with the damaged checkpoints passed over on the way, which are moved out of
        the way into DIR/damaged/ (kept for inspection; the run saves those steps anew). Writers only.

        Returns (None, None, skipped) when no checkpoint is intact.
        """
        skipped = []
        for step in self.steps():
            try:
                saved = self.read(step)
                return saved, self.restore(saved, target), skipped
            except Damaged as e:
                skipped.append(Skipped(step, e.problem, self._move_aside(step)))
        return None, None, skipped

    def _move_aside(self, step: int) -> Path:
        self._require_writer()
        folder = self.path / DAMAGED
        folder.mkdir(exist_ok=True)
        destination = folder / str(step)
        n = 1
        while destination.exists():
            n += 1
            destination = folder / f"{step}-{n}"
        self._step_folder(step).rename(destination)
        self.manager.reload()
        return destination

    def check_config_file(self, saved: Saved) -> None:
        """DIR/config.json agrees with the (checksummed) configuration of checkpoint `saved`.

        Raises:
            CheckpointError: it was edited, or belongs to another run.
        """
        path = self.file(CONFIG_FILE)
        written = read_config_file(path)
        if written is None:
            return
        what = differences(written, saved.config, (f.name for f in dataclasses.fields(Config)))
        if what:
            raise CheckpointError(f"{path} disagrees with the run's checkpoints: checkpoint {saved.global_step} was "
                                  f"trained with {what} as the file says. The file was edited after the run wrote "
                                  "it, or copied from another run. The checkpoints are checksummed, so they are right: "
                                  f"delete {path} (training rewrites it from the checkpoint) or put the original back.")

    def kept_config(self) -> Config | None:
        """The configuration of the run kept here: its newest checkpoint whose metadata reads back
        intact, else its config.json (a run stopped before its first checkpoint); None for a new folder.

        Raises:
            CheckpointError: config.json contradicts the checkpoints, or is damaged.
        """
        for step in self.steps():
            try:
                saved = self.read(step)
            except Damaged:
                continue  # resuming passes over it, and says so
            self.check_config_file(saved)
            return saved.config
        return read_config_file(self.file(CONFIG_FILE))

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None
        self._lock.release()
        self._writer = False


def read_config_file(path: Path) -> Config | None:
    """The Config a run folder's config.json holds (None when there is none).

    Raises:
        CheckpointError: the file is not a jaxmnist configuration (cut short, or edited beyond one).
    """
    if not path.is_file():
        return None
    try:
        return Config(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is damaged: it is not a jaxmnist run's configuration ({_first_line(e)}). "
                              "Delete it or put the original back; if the folder holds checkpoints, training "
                              "rewrites it from the newest.") from None


# The fields a resumed run may change: where the data is and what runs it, not the mathematics.
RESUMABLE = ("data_dir", "verify_checksums", "devices", "distributed")


def differences(requested: Config, kept: Config, fields: Iterable[str]) -> str:
    """The `fields` (other than RESUMABLE ones) where `requested` is not `kept`, as "arch 'gap', not 'fc'"."""
    clash = sorted(f for f in fields if f not in RESUMABLE and getattr(requested, f) != getattr(kept, f))
    return ", ".join(f"{f} {getattr(kept, f)!r}, not {getattr(requested, f)!r}" for f in clash)


def resume_config(kept: Config, requested: Config, explicit: set[str], path: Path) -> Config:
    """The kept run's configuration, with the `RESUMABLE` fields the command line set.

    Raises:
        ConfigError: naming each field where `requested` (its `explicit` fields) contradicts the kept run.
    """
    what = differences(requested, kept, explicit)
    if what:
        raise ConfigError(f"Invalid configuration: {path} holds a checkpoint of another run ({what}): resume it "
                          "without those flags (the checkpoint keeps its own configuration), or give a new run "
                          "another --checkpoint-dir.")
    return dataclasses.replace(kept, **{f: getattr(requested, f) for f in explicit if f in RESUMABLE})


class MetricsLog:
    """The metrics log: JSON lines, one object per progress redraw and one per epoch, each with its
    global `step`. A resumed run keeps the lines up to its checkpoint and logs the rest anew."""

    def __init__(self, path: str | Path, resumed_at: int | None = None):
        self.path = Path(path)
        kept = []
        if resumed_at is not None and self.path.is_file():
            kept = [record for record in read_metrics(self.path) if record["step"] <= resumed_at]
        self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))

    def write(self, **record) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Nothing to release: each write opens and closes the file, so that readers see every line at once."""


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics log. A last line cut short (a run killed mid-write) is left out.

    Raises:
        CheckpointError: an earlier line is not a record (the file was damaged or edited).
    """
    lines = [(n, line) for n, line in enumerate(Path(path).read_text().splitlines(), 1) if line.strip()]
    records = []
    for n, line in lines:
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not an object with a whole-number step")
        except ValueError as e:
            if n == lines[-1][0]:
                break
            raise CheckpointError(f"The metrics log {path} is damaged: line {n} is not a record ({e}). Delete that "
                                  "line (the other lines stay usable) or restore the file.") from None
        records.append(record)
    return records


def write_json(path: str | Path, value) -> None:
    """Writes `value` as indented JSON, atomically: a reader sees the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)
