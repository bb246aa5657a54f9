"""--tensorboard: the metrics log's scalars as TensorBoard event files, read back without TensorFlow."""

import dataclasses
import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxmnist.checkpoint import read_metrics
from jaxmnist.errors import Interrupted
from jaxmnist.loop import fit
from jaxmnist.recipes import RECIPES
from jaxmnist.tensorboard import TAGS, TensorBoardLog
from jaxmnist.train import main

# fc trains on every image it is given (no validation split) in batches of 64: 10 steps an epoch on 640.
TINY = ["--arch", "fc", "--train-size", "640", "--epochs", "2", "--no-progress"]


def read_events(folder: Path) -> list:
    """Every event in `folder`'s event files, oldest file first, checked as TensorBoard reads them
    (tensorboardX has no reader): TFRecords of a length, its masked CRC-32C, the event, its masked CRC-32C."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            header = data[at: at + 8]
            (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[at + 8: at + 12])
            body = data[at + 12: at + 12 + length]
            (body_crc,) = struct.unpack("<I", data[at + 12 + length: at + 16 + length])
            assert (header_crc, body_crc) == (masked_crc32c(header), masked_crc32c(body)), path
            events.append(Event.FromString(body))
            at += 16 + length
    return events


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar in `folder`'s event files as {tag: {step: value}}."""
    scalars = {}
    for event in read_events(folder):
        for value in event.summary.value:
            scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def expected_scalars(metrics_path: Path) -> dict[str, dict[int, float]]:
    """The metrics log's numbers as the event files should hold them: float32, at each record's step."""
    expected = {}
    for record in read_metrics(metrics_path):
        for key, value in record.items():
            if key not in ("epoch", "step", "seconds") and value is not None:
                expected.setdefault(TAGS[key], {})[record["step"]] = float(np.float32(value))
    return expected


def test_the_event_files_hold_the_metrics_log_at_its_steps(mnist_dir, tmp_path):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
    folder, metrics = tmp_path / "tb", tmp_path / "metrics.jsonl"
    assert main([*TINY, "--data-dir", str(mnist_dir), "--metrics", str(metrics), "--tensorboard", str(folder)]) == 0
    scalars = read_scalars(folder)
    # fc keeps no validation split: its val accuracy is None in the log, and no point in TensorBoard.
    assert sorted(scalars) == ["epoch/test_accuracy", "epoch/train_accuracy", "epoch/train_loss", "train/accuracy",
                               "train/loss", "train/lr"]
    assert all(sorted(steps) == [10, 20] for steps in scalars.values()), scalars
    assert scalars == expected_scalars(metrics)
    assert scalars["train/lr"] == {10: np.float32(1e-3), 20: np.float32(1e-3)}  # the fc recipe's constant rate
    assert "tensorflow" not in sys.modules


def test_a_stopped_run_closes_its_event_file_with_every_record_so_far(mnist, tmp_path):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
    polls = iter([False, True])  # before the first step, then after epoch 1 of 2
    config = dataclasses.replace(RECIPES["fc"], train_size=640, epochs=2)
    with pytest.raises(Interrupted):
        fit(config, mnist, progress=False, metrics_path=tmp_path / "metrics.jsonl", tensorboard_dir=tmp_path / "tb",
            should_stop=lambda: next(polls))
    # Unless the stop closed the writer, its points would still wait in its queue for a flush (every 10 s).
    scalars = read_scalars(tmp_path / "tb")
    assert scalars == expected_scalars(tmp_path / "metrics.jsonl") and scalars["epoch/test_accuracy"].keys() == {10}


def test_a_resumed_log_hides_the_points_after_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
    log = TensorBoardLog(tmp_path / "tb", resumed_at=10)
    log.write(epoch=2, step=15, loss=0.5, accuracy=0.75, lr=1e-3, seconds=3.0)
    log.write(epoch=2, step=20, train_loss=0.25, train_accuracy=0.875, val_accuracy=None, test_accuracy=0.9375)
    log.close()
    # TensorBoard drops every earlier point from the step of a session's start on.
    events = read_events(tmp_path / "tb")
    assert [e.step for e in events if e.session_log.status == e.session_log.START] == [11]
    assert read_scalars(tmp_path / "tb") == {
        "train/loss": {15: 0.5}, "train/accuracy": {15: 0.75}, "train/lr": {15: float(np.float32(1e-3))},
        "epoch/train_loss": {20: 0.25}, "epoch/train_accuracy": {20: 0.875}, "epoch/test_accuracy": {20: 0.9375}}


def test_missing_tensorboardx_exits_2_naming_the_extra_before_any_work(tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "tensorboardX"
                        else find_spec(name, *args))
    # The data folder is never read: the check comes first.
    assert main([*TINY, "--data-dir", str(tmp_path / "no-data"), "--tensorboard", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxmnist: error: Invalid configuration: --tensorboard writes TensorBoard event files")
    assert "pip install 'jaxmnist[tensorboard]'" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "tb").exists()


@pytest.mark.parametrize("folder, problem", [("/no/such/tb", "the folder /no/such does not exist"),
                                             ("/etc/hostname", "/etc/hostname is a file, not a folder")])
def test_an_unusable_tensorboard_folder_exits_2_before_any_work(folder, problem, tmp_path, capsys):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
    assert main([*TINY, "--data-dir", str(tmp_path / "no-data"), "--tensorboard", folder]) == 2
    err = capsys.readouterr().err
    assert f"--tensorboard {folder}: {problem}" in err and err.strip().count("\n") == 0
