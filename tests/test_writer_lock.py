"""One writer per run folder: a second is refused by name, a dead one's lock is taken over."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxmnist.errors import FolderInUse
from jaxmnist.train import main
from jaxmnist.writer_lock import HOLDER_FILE, WriterLock

HOLD = "import sys, time; from pathlib import Path; from jaxmnist.writer_lock import WriterLock; " \
       "lock = WriterLock(Path(sys.argv[1])); lock.acquire(); print('held', flush=True); time.sleep(120)"


def test_a_second_writer_is_refused_by_name_and_a_dead_ones_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FolderInUse) as refused:
            WriterLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no chance to release; the kernel drops its lock, writer.json stays
        holder.communicate()
    since = json.loads((tmp_path / HOLDER_FILE).read_text())["since"]
    who = f"process {holder.pid} on host {socket.gethostname()}, since {since} (`python -c {tmp_path}`)"
    assert str(refused.value).startswith(f"{tmp_path} is being written by another run: {who}. One run folder has one "
                                         "writer at a time: wait for that run to end")
    lock = WriterLock(tmp_path)
    assert lock.acquire() == f"took over the lock of {tmp_path} left by {who}, which ended without releasing it"
    lock.release()
    assert not (tmp_path / HOLDER_FILE).exists()
    lock = WriterLock(tmp_path)
    assert lock.acquire() is None
    lock.release()


def test_two_runs_on_one_folder_the_second_is_refused_and_the_first_is_untouched(mnist_dir, tmp_path, capsys):
    """The case that mixed two runs' metrics and died in a FileExistsError: seeds 0 and 5 started
    into one folder at once."""
    flags = ["--arch", "fc", "--train-size", "3200", "--epochs", "2", "--data-dir", str(mnist_dir), "--no-progress"]
    folder = tmp_path / "shared"
    first = subprocess.Popen([sys.executable, "-m", "jaxmnist.train", *flags, "--checkpoint-dir", str(folder)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (folder / HOLDER_FILE).is_file():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    assert main([*flags, "--seed", "5", "--checkpoint-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"jaxmnist: error: {folder} is being written by another run: process {first.pid} on host " in err
    assert "Traceback" not in err and err.strip().count("\n") == 0
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err

    alone = tmp_path / "alone"
    assert main([*flags, "--checkpoint-dir", str(alone)]) == 0
    for name in ("metrics.jsonl", "summary.json"):
        assert strip_times(folder / name) == strip_times(alone / name), name
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["100", "50"]


def strip_times(path: Path) -> list:
    """A JSON or JSON-lines file's records without the fields that hold times."""
    timed = {"seconds", "train_seconds", "eval_seconds", "compile_seconds", "images_per_second", "wall_seconds",
             "phases", "data_dir"}
    text = path.read_text()
    records = [json.loads(line) for line in text.splitlines()] if path.suffix == ".jsonl" else [json.loads(text)]

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in timed}
        return [strip(v) for v in value] if isinstance(value, list) else value

    return strip(records)
