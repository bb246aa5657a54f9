"""Run folders: checkpoints, resume, stopping by signal, the divergence guard, the metrics log."""

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxmnist.checkpoint import Position, RunDir, read_metrics
from jaxmnist.recipes import RECIPES
from jaxmnist.train import Trainer, init_run, main

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
    saved = run_dir.latest()
    _, _, state, _ = init_run(saved.config, 1)
    restored = run_dir.restore(saved.global_step, {"state": state, "metrics": jax.numpy.zeros(3)})
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
    stopped = RunDir(parts).latest()
    assert stopped.position.epoch == 0 and 0 < stopped.position.step < 200 and stopped.position.step % 50 == 0

    run = train_process(parts, mnist_dir, "--resume")
    wait_for(lambda: RunDir(parts).latest().global_step == 200, run, "the epoch-1 checkpoint")
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
    assert RunDir(tmp_path / "run").latest().position.step > 0


def test_resume_refuses_another_run_and_a_new_run_refuses_a_used_folder(trained_run, mnist_dir, capsys):
    assert main(["--arch", "fc", "--resume", "--checkpoint-dir", str(trained_run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{trained_run} holds a checkpoint of another run (arch 'gap', not 'fc'" in err
    assert "resume it without those flags" in err and err.strip().count("\n") == 0
    assert main(["--resume", "--checkpoint-dir", str(trained_run), "--lr", "0.1", "--no-progress"]) == 2
    assert "lr 0.015, not 0.1" in capsys.readouterr().err
    assert main(["--arch", "gap", "--checkpoint-dir", str(trained_run), "--data-dir", str(mnist_dir)]) == 2
    assert "already holds a run's checkpoints: continue it with --resume" in capsys.readouterr().err


def test_resuming_a_finished_run_reports_it_again(trained_run, capsys):
    """Nothing left to train: the summary comes from the checkpoint, moving the data is allowed."""
    summary = json.loads((trained_run.parent / "train.json").read_text())
    assert main(["--resume", "--checkpoint-dir", str(trained_run), "--no-progress",
                 "--data-dir", summary["config"]["data_dir"]]) == 0
    assert f"{summary['test_accuracy']:.2%}" in capsys.readouterr().out


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
    saved = RunDir(trained_run).latest()
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
    fresh.state = run_dir.restore(10, fresh.checkpoint_arrays(fresh.zero_metrics()))["state"]
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
        saved = RunDir(tmp_path / "run").latest()
        assert (saved.global_step, saved.position.step) == (0, 0)
