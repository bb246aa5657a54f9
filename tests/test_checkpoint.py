"""Run folders: checkpoints, resume, stopping by signal, the divergence guard, the metrics log."""

import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxmnist.checkpoint import Position, RunDir, read_metrics
from jaxmnist.programs import init_run
from jaxmnist.recipes import RECIPES
from jaxmnist.train import main
from jaxmnist.trainer import Trainer

# 2 epochs of 12,800 images: 200 steps (4 chunks) an epoch, long enough to be stopped in the middle.
FLAGS = ["--arch", "gap", "--train-size", "12800", "--epochs", "2", "--no-progress"]


def train_process(folder: Path, mnist_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxmnist.train", *FLAGS, "--data-dir", str(mnist_dir),
                             "--checkpoint-dir", str(folder), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 300
    while not condition():
        assert process.poll() is None, f"the run ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after 300 s"
        time.sleep(0.02)


def host(tree) -> list[np.ndarray]:
    """A pytree's leaves as host arrays, PRNG keys as their key data."""
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(tree)]


def arrays(folder: Path) -> list[np.ndarray]:
    """The newest checkpoint's arrays (model, optimiser, metrics)."""
    run_dir = RunDir(folder)
    saved = run_dir.read()
    _, _, state, _ = init_run(saved.config, 1)
    restored = run_dir.restore(saved, {"state": state, "metrics": jax.numpy.zeros(3)})
    run_dir.close()
    return host(restored)


def test_a_run_stopped_by_ctrl_c_then_killed_resumes_to_the_uninterrupted_result(mnist_dir, tmp_path):
    """SIGINT mid-epoch: exit 130 with a checkpoint; resumed, then SIGKILL after the epoch-1 checkpoint;
    resumed again: the same numbers, bit for bit, as a run that was never interrupted."""
    whole = tmp_path / "whole"
    assert main([*FLAGS, "--data-dir", str(mnist_dir), "--checkpoint-dir", str(whole)]) == 0

    parts = tmp_path / "parts"
    run = train_process(parts, mnist_dir)
    wait_for(lambda: (parts / "metrics.jsonl").is_file() and (parts / "metrics.jsonl").read_text(), run,
             "first chunk")
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 130, err
    assert f"checkpoint saved in {parts}: resume with `python -m jaxmnist.train --resume --checkpoint-dir" in err
    assert "Traceback" not in err
    stopped = RunDir(parts).read()
    assert stopped.position.epoch == 0 and 0 < stopped.position.step < 200 and stopped.position.step % 50 == 0

    run = train_process(parts, mnist_dir, "--resume")
    wait_for(lambda: RunDir(parts).read().global_step == 200, run, "the epoch-1 checkpoint")
    run.kill()
    run.communicate()

    run = train_process(parts, mnist_dir, "--resume")
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    expected, got = (json.loads((folder / "summary.json").read_text()) for folder in (whole, parts))
    for key in ("train_loss", "train_accuracy", "val_accuracy", "test_accuracy"):
        assert [e[key] for e in got["per_epoch"]] == [e[key] for e in expected["per_epoch"]], key
    assert all(np.array_equal(a, b) for a, b in zip(arrays(whole), arrays(parts)))
    # The metrics log holds every chunk once, in order, as if never interrupted.
    assert [r["step"] for r in read_metrics(parts / "metrics.jsonl")] == \
        [r["step"] for r in read_metrics(whole / "metrics.jsonl")]


def test_sigterm_stops_with_143_and_a_checkpoint(mnist_dir, tmp_path):
    run = train_process(tmp_path / "run", mnist_dir)
    wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").is_file() and
             (tmp_path / "run" / "metrics.jsonl").read_text(), run, "first chunk")
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 143 and "SIGTERM" in err and "Traceback" not in err
    assert RunDir(tmp_path / "run").read().position.step > 0


def test_resume_refuses_another_run_and_a_new_run_refuses_a_used_folder(trained_run, mnist_dir, capsys):
    assert main(["--arch", "fc", "--resume", "--checkpoint-dir", str(trained_run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{trained_run} holds a checkpoint of another run (arch 'gap', not 'fc'" in err
    assert "resume it without those flags" in err and err.strip().count("\n") == 0
    assert main(["--resume", "--checkpoint-dir", str(trained_run), "--lr", "0.1", "--no-progress"]) == 2
    assert "lr 0.015, not 0.1" in capsys.readouterr().err
    assert main(["--arch", "gap", "--checkpoint-dir", str(trained_run), "--data-dir", str(mnist_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{trained_run} keeps another run (train_size 6400, not None): continue that run with its own command" in err
    assert err.strip().count("\n") == 0


def test_resuming_a_finished_run_reports_it_again(trained_run, capsys):
    """Nothing left to train: the summary comes from the checkpoint, moving the data is allowed;
    the run's own command does the same."""
    summary = json.loads((trained_run.parent / "train.json").read_text())
    assert main(["--resume", "--checkpoint-dir", str(trained_run), "--no-progress",
                 "--data-dir", summary["config"]["data_dir"]]) == 0
    assert f"{summary['test_accuracy']:.2%}" in capsys.readouterr().out
    assert main(["--arch", "gap", "--train-size", "6400", "--checkpoint-dir", str(trained_run), "--no-progress",
                 "--data-dir", summary["config"]["data_dir"]]) == 0
    out, err = capsys.readouterr()
    assert f"{summary['test_accuracy']:.2%}" in out
    assert f"jaxmnist: continuing the run in {trained_run} from checkpoint 100 (all its epochs done)." in err


def test_the_run_folder_holds_config_metrics_summary_and_checkpoints(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    assert config["arch"] == "gap" and config["train_size"] == 6_400
    records = read_metrics(trained_run / "metrics.jsonl")
    chunks = [r for r in records if "loss" in r]
    assert [r["step"] for r in chunks] == [50, 100]  # 6,400 images: 100 steps of 64
    assert all(np.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 and r["lr"] > 0 for r in chunks)
    assert chunks[0]["lr"] > chunks[1]["lr"] and chunks[0]["seconds"] < chunks[1]["seconds"]
    epoch = records[-1]
    summary = json.loads((trained_run / "summary.json").read_text())
    assert epoch["step"] == 100 and epoch["test_accuracy"] == summary["test_accuracy"]
    saved = RunDir(trained_run).read()
    assert saved.global_step == 100 and saved.position == Position(1, 0, saved.position.epochs)
    assert saved.position.epochs[0].test_accuracy == summary["test_accuracy"]


def test_a_checkpoint_restores_the_exact_state(mnist, tmp_path):
    config = dataclasses.replace(RECIPES["gap"], val_size=0)
    trainer = Trainer(config, mnist.train.take(np.arange(640)), mnist.test.take(np.arange(500)))
    trainer.train_epoch(0)
    accuracy, saved = trainer.evaluate(trainer.eval_splits[0]), host(trainer.state)
    run_dir = RunDir(tmp_path / "run")
    run_dir.save(10, config, Position(1), trainer.checkpoint_arrays(trainer.zero_metrics()))
    fresh = Trainer(config, mnist.train.take(np.arange(640)), mnist.test.take(np.arange(500)))
    assert fresh.evaluate(fresh.eval_splits[0]) != accuracy
    fresh.state = run_dir.restore(run_dir.read(10), fresh.checkpoint_arrays(fresh.zero_metrics()))["state"]
    run_dir.close()
    assert all(np.array_equal(a, b) for a, b in zip(saved, host(fresh.state)))
    assert fresh.evaluate(fresh.eval_splits[0]) == accuracy


@pytest.mark.parametrize("folder", [False, True])
def test_a_diverging_run_stops_with_3_naming_the_step_and_the_fix(folder, mnist_dir, tmp_path, capsys):
    flags = ["--arch", "gap", "--lr", "1e6", "--clip-norm", "none", "--train-size", "640",
             "--data-dir", str(mnist_dir), "--no-progress"]
    if folder:
        flags += ["--checkpoint-dir", str(tmp_path / "run")]
    assert main(flags) == 3
    err = capsys.readouterr().err
    assert err.startswith("jaxmnist: error: Training diverged: the mean loss over steps 1-10 of epoch 1 was ")
    assert "(over 1000, or not finite; learning rate 1e+06). Lower it, e.g. --lr 100000" in err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0
    if folder:
        assert "The last finite state (step 0 of epoch 1) is checkpointed in" in err
        saved = RunDir(tmp_path / "run").read()
        assert (saved.global_step, saved.position.step) == (0, 0)


# Integrity -------------------------------------------------------------------------------------

# fc on 6,440 images: 100 full batches of 64 and a last one of 40, for two epochs: checkpoints at
# steps 101 and 202. Its plot and summary are named inside the folder the run creates.
FC = ["--arch", "fc", "--train-size", "6440", "--epochs", "2", "--no-progress"]


def fc_command(mnist_dir: Path, folder: Path, *extra: str) -> list[str]:
    return [*FC, "--data-dir", str(mnist_dir), "--checkpoint-dir", str(folder), *extra]


@pytest.fixture(scope="module")
def fc_run(mnist_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fc") / "run"
    assert main(fc_command(mnist_dir, folder, "--plot", str(folder / "curves.png"),
                           "--json", str(folder / "train.json"))) == 0
    return folder


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def array_file(folder: Path, step: int) -> Path:
    """The largest file of checkpoint `step`'s array data (TensorStore's OCDBT data files)."""
    files = [f for f in (folder / "checkpoints" / str(step) / "arrays").rglob("*")
             if f.is_file() and f.parent.name == "d"]
    return max(files, key=lambda f: f.stat().st_size)


def flip_bits(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in (len(data) // 2, len(data) // 2 + 1):
        data[i] ^= 0x24
    path.write_bytes(bytes(data))


def damage(folder: Path, how: str, step: int = 202) -> None:
    checkpoint = folder / "checkpoints" / str(step)
    if how == "flipped bits":
        flip_bits(array_file(folder, step))
    elif how == "truncated file":
        path = array_file(folder, step)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "missing file":
        array_file(folder, step).unlink()
    elif how == "missing part":
        shutil.rmtree(checkpoint / "integrity")
    elif how == "edited metadata":
        path = checkpoint / "progress" / "metadata"
        path.write_text(path.read_text().replace('"lr": 0.001', '"lr": 0.002'))
    else:
        raise AssertionError(how)


def one_paragraph(err: str) -> str:
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    return err


@pytest.mark.parametrize("how, problem", [
    ("flipped bits", "does not match the checksum recorded when it was saved (changed bytes, such as a flipped bit)"),
    ("truncated file", "bytes long, not the "),
    ("missing file", "is missing"),
    ("missing part", "its file integrity/commit_success.txt is missing"),
    ("edited metadata", "its file progress/metadata does not match the checksum"),
])
def test_a_damaged_checkpoint_is_refused_by_name_and_another_can_be_chosen(how, problem, fc_run, tmp_path, capsys):
    from jaxmnist import evaluate

    folder = copy_of(fc_run, tmp_path)
    damage(folder, how)
    assert evaluate.main(["--checkpoint-dir", str(folder)]) == 2
    err = one_paragraph(capsys.readouterr().err)
    assert f"jaxmnist: error: Checkpoint 202 in {folder} is damaged: " in err and problem in err
    assert "Nothing was computed from it. To go on, choose another checkpoint with --step N (this folder also " \
           "holds steps 101)" in err
    assert evaluate.main(["--checkpoint-dir", str(folder), "--step", "101"]) == 0
    assert "checkpoint" in capsys.readouterr().out


@pytest.mark.parametrize("how, problem", [
    # Which array the flipped bytes fall in depends on how TensorStore packed the data file; and
    # a flip can break the compressed stream (a read error) rather than change the values.
    ("flipped bits", r"(1 of its 36 arrays \(\['state'\]\S+\) do not match the checksums recorded when it was "
                     r"saved|its arrays cannot be read \(ValueError: \w+: Error reading \S+ in OCDBT database)"),
    ("edited metadata", r"its metadata \(configuration and position\) does not match the checksum recorded"),
])
def test_damage_the_file_list_missed_is_caught_by_the_arrays_and_metadata_checksums(how, problem, fc_run, tmp_path,
                                                                                     capsys):
    """Bytes that were wrong before the file list was made (a bad write, say): the list agrees with
    them, and the checksums of the arrays restored and of the metadata read still refuse them."""
    from jaxmnist import checkpoint, evaluate

    folder = copy_of(fc_run, tmp_path)
    damage(folder, how)
    step_folder = folder / "checkpoints" / "202"
    checkpoint.write_json(step_folder / checkpoint.FILE_LIST, checkpoint.file_digests(step_folder))
    assert evaluate.main(["--checkpoint-dir", str(folder)]) == 2
    err = one_paragraph(capsys.readouterr().err)
    assert re.search(f"Checkpoint 202 in {re.escape(str(folder))} is damaged: {problem}", err), err


def test_predict_refuses_a_damaged_checkpoint(fc_run, mnist, tmp_path, capsys):
    from PIL import Image

    from jaxmnist import predict

    folder = copy_of(fc_run, tmp_path)
    flip_bits(array_file(folder, 202))
    Image.fromarray(mnist.test.images_NHW[0]).save(tmp_path / "digit.png")
    assert predict.main(["--checkpoint-dir", str(folder), str(tmp_path / "digit.png")]) == 2
    assert f"Checkpoint 202 in {folder} is damaged" in one_paragraph(capsys.readouterr().err)
    assert predict.main(["--checkpoint-dir", str(folder), "--step", "101", str(tmp_path / "digit.png")]) == 0


def summary_numbers(folder: Path) -> list:
    per_epoch = json.loads((folder / "summary.json").read_text())["per_epoch"]
    return [[e[k] for k in ("train_loss", "train_accuracy", "test_accuracy")] for e in per_epoch]


def test_the_same_command_resumes_past_a_damaged_checkpoint_to_the_same_result(fc_run, mnist_dir, tmp_path,
                                                                                 capsys):
    folder = copy_of(fc_run, tmp_path)
    flip_bits(array_file(folder, 202))
    assert main(fc_command(mnist_dir, folder)) == 0
    err = capsys.readouterr().err
    assert f"jaxmnist: checkpoint 202 in {folder} is damaged (its file arrays/" in err
    assert f"passed over, and moved to {folder / 'damaged' / '202'}." in err
    assert f"jaxmnist: continuing the run in {folder} from checkpoint 101 (epoch 2, step 0)." in err
    assert summary_numbers(folder) == summary_numbers(fc_run)
    assert all(np.array_equal(a, b) for a, b in zip(arrays(fc_run), arrays(folder)))
    assert (folder / "damaged" / "202" / "arrays").is_dir()  # kept for inspection, nothing lost


def test_with_no_intact_checkpoint_the_same_command_starts_over_saying_so(fc_run, mnist_dir, tmp_path, capsys):
    folder = copy_of(fc_run, tmp_path)
    damage(folder, "truncated file", 101)
    damage(folder, "missing part", 202)
    assert main(fc_command(mnist_dir, folder)) == 0
    err = capsys.readouterr().err
    assert err.count("is damaged") == 2
    assert f"jaxmnist: {folder} keeps this run but no intact checkpoint of it: starting it from the beginning." in err
    assert summary_numbers(folder) == summary_numbers(fc_run)


def test_a_run_stopped_before_its_first_checkpoint_or_killed_mid_save_continues_with_the_same_command(
        fc_run, mnist_dir, tmp_path, capsys):
    folder = copy_of(fc_run, tmp_path)
    # A kill while checkpoint 202 was being written leaves orbax's temporary folder, not a checkpoint.
    (folder / "checkpoints" / "202").rename(folder / "checkpoints" / "202.orbax-checkpoint-tmp")
    assert RunDir(folder).read().global_step == 101
    assert main(fc_command(mnist_dir, folder)) == 0
    assert "from checkpoint 101 (epoch 2, step 0)" in capsys.readouterr().err
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["101", "202"]
    assert summary_numbers(folder) == summary_numbers(fc_run)

    # Killed before its first checkpoint: the folder holds the run's config.json only.
    shutil.rmtree(folder / "checkpoints")
    (folder / "summary.json").unlink()
    assert main(fc_command(mnist_dir, folder)) == 0
    assert "keeps this run but no intact checkpoint of it: starting it from the beginning" in capsys.readouterr().err
    assert summary_numbers(folder) == summary_numbers(fc_run)
    # --resume, as scripts use it, does the same.
    shutil.rmtree(folder / "checkpoints")
    assert main(["--resume", "--checkpoint-dir", str(folder), "--no-progress"]) == 0
    assert summary_numbers(folder) == summary_numbers(fc_run)


def test_an_edited_config_json_is_refused(fc_run, mnist_dir, tmp_path, capsys):
    from jaxmnist import evaluate

    folder = copy_of(fc_run, tmp_path)
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"arch": "fc"', '"arch": "gap"'))
    assert evaluate.main(["--checkpoint-dir", str(folder)]) == 2
    err = one_paragraph(capsys.readouterr().err)
    assert f"{config} disagrees with the run's checkpoints: checkpoint 202 was trained with arch 'fc', not 'gap' as " \
           "the file says" in err and f"delete {config}" in err
    assert main(fc_command(mnist_dir, folder)) == 2
    assert "disagrees with the run's checkpoints" in one_paragraph(capsys.readouterr().err)
    config.write_text("{\"arch\": ")  # cut short
    assert evaluate.main(["--checkpoint-dir", str(folder)]) == 2
    assert f"{config} is damaged: it is not a jaxmnist run's configuration" in one_paragraph(capsys.readouterr().err)
    config.unlink()  # the fix it names: the checkpoints say all
    assert evaluate.main(["--checkpoint-dir", str(folder)]) == 0
    config.write_text("{\"arch\": ")
    shutil.rmtree(folder / "checkpoints")
    assert main(fc_command(mnist_dir, folder)) == 2
    assert f"{config} is damaged: it is not a jaxmnist run's configuration" in one_paragraph(capsys.readouterr().err)


def tree_state(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_readers_leave_the_run_folder_exactly_as_it_was(fc_run, mnist, tmp_path):
    """evaluate, predict and plot write nothing into the folder (and take no lock): a read-only
    folder serves them, and they never disturb a run writing it."""
    from PIL import Image

    from jaxmnist import evaluate, plot, predict

    folder = copy_of(fc_run, tmp_path)
    before = tree_state(folder)
    Image.fromarray(mnist.test.images_NHW[0]).save(tmp_path / "digit.png")
    assert evaluate.main(["--checkpoint-dir", str(folder)]) == 0
    assert predict.main(["--checkpoint-dir", str(folder), str(tmp_path / "digit.png")]) == 0
    assert plot.main(["--checkpoint-dir", str(folder), str(tmp_path / "curves.png")]) == 0
    assert tree_state(folder) == before


def test_the_last_smaller_batch_is_logged_with_the_chunk_before_it(fc_run):
    records = read_metrics(fc_run / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [50, 101, 151, 202]
    assert [r["step"] for r in records if "test_accuracy" in r] == [101, 202]
    # Outputs named inside the folder the run created were written there.
    assert (fc_run / "curves.png").is_file() and json.loads((fc_run / "train.json").read_text())["epochs"] == 2


def test_a_metrics_log_cut_short_still_plots_and_a_damaged_one_is_named(fc_run, tmp_path, capsys):
    from jaxmnist import plot

    folder = copy_of(fc_run, tmp_path)
    log = folder / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines) + "\n" + lines[0][:20])  # killed mid-write
    assert [r["step"] for r in read_metrics(log)] == [r["step"] for r in read_metrics(fc_run / "metrics.jsonl")]
    assert plot.main(["--checkpoint-dir", str(folder), str(tmp_path / "curves.png")]) == 0
    capsys.readouterr()
    log.write_text("\n".join([lines[0], "{garbage", *lines[1:]]) + "\n")
    assert plot.main(["--checkpoint-dir", str(folder), str(tmp_path / "curves.png")]) == 2
    assert f"The metrics log {log} is damaged: line 2 is not a record" in one_paragraph(capsys.readouterr().err)
