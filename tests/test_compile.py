"""`python -m jaxmnist.compile`: this CPU in-process; TPU v5e targets in subprocesses through libtpu
(the tpu extra, which `.ci/run` installs), with this jax and with Colab's own stack."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from jaxmnist import platforms, programs, sharding, targets
from jaxmnist.compile import main
from jaxmnist.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30
# Colab's TPU runtime pins these (googlecolab/backend-info); `.ci/run` builds this environment with them.
COLAB_PYTHON = ROOT / ".venv-colab" / "bin" / "python"


def compile_for(target: str, tmp_path: Path, *flags: str, python: str | Path = sys.executable) -> dict:
    out = tmp_path / f"{target}-{'-'.join(flags)}.json"
    done = subprocess.run([str(python), "-m", "jaxmnist.compile", "--target", target, *flags, "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_cpu_target_counts_the_programs_per_step_and_estimates_no_time(tmp_path):
    out = tmp_path / "fc.json"
    assert main(["--target", "cpu", "--arch", "fc", "--train-size", "650", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r["target"], r["recipe"], r["steps_per_epoch"], r["params"]) == ("cpu", "fc", 11, 24_714)
    assert r["step_seconds"] is None and r["epoch_seconds"] is None and r["estimate"] is None
    chunk, tail, evaluation = r["programs"]
    assert (chunk["unit"], chunk["calls"], tail["unit"], tail["calls"]) == ("step of 64", 10, "step of 10", 1)
    # XLA costs the chunk's loop body once: a step of 64 images, 6.4 times the last step's 10, per image alike.
    assert chunk["flops"] == r["flops_per_step"] and abs(chunk["flops"] / 64 / (tail["flops"] / 10) - 1) < 0.05
    assert 0 < r["memory_bytes"] < r["device_memory_bytes"]


def test_a_missing_compiler_is_named_with_the_pip_command_that_installs_it(monkeypatch, capsys):
    monkeypatch.setattr(targets, "_installed", lambda module: False)
    for target, extra in (("tpu-v5e-1", "tpu"), ("gpu-t4", "cuda12")):
        assert main(["--target", target, "--recipe", "gap"]) == 2
        err = capsys.readouterr().err
        assert f'pip install "jax[{extra}]=={jax.__version__}"' in err and err.count("\n") == 1, err


def test_bad_flags_are_refused_before_compiling(capsys):
    assert main(["--target", "tpu-v5e-1", "--recipe", "gap", "--devices", "2"]) == 2
    assert "--devices 2 but tpu-v5e-1 has 1" in capsys.readouterr().err
    assert main(["--target", "cpu", "--recipe", "gap", "--batch-size", "0"]) == 2
    assert "use a batch size of at least 1" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason=f'needs libtpu: pip install "jax[tpu]=={jax.__version__}" (.ci/run installs it)')
def test_gap_and_res8k_compile_for_tpu_v5e_within_the_goals(tmp_path):
    # In this process (libtpu loads beside the CPU backend the tests use): a process per target took a
    # minute more of CI.
    reports = {}
    for target in ("tpu-v5e-1", "tpu-v5e-8"):
        for recipe in ("gap", "res8k"):
            out = tmp_path / f"{target}-{recipe}.json"
            assert main(["--target", target, "--recipe", recipe, "--json", str(out)]) == 0
            reports[target, recipe] = r = json.loads(out.read_text())
            assert r["devices"] == targets.TARGETS[target].devices and r["versions"]["libtpu"]
            assert 0 < r["step_seconds"] and 0 < r["epoch_seconds"] < 5, r
            assert all(p["memory_bytes"] < 16 * GiB for p in r["programs"])
    assert reports["tpu-v5e-1", "gap"]["epoch_seconds"] <= 0.5

    # res8k's augmentation (rotation, shift, zoom), compiled alone for the chip: at most a quarter of the rest
    # of its step. (benchmarks/accelerators.py compiles the step without it: 1.2% there.)
    mesh = targets.mesh(targets.TARGETS["tpu-v5e-1"])
    augment = programs.augmentation(RECIPES["res8k"], platforms.of(mesh))
    placement = sharding.replicated(mesh)
    key = jax.ShapeDtypeStruct((), programs.seed_streams(0).dtype, sharding=placement)
    images = jax.ShapeDtypeStruct((32, 28, 28), jnp.float32, sharding=placement)
    alone = jax.jit(augment).lower(key, images).compile().cost_analysis()["optimal_seconds"]
    step = reports["tpu-v5e-1", "res8k"]["step_seconds"]
    assert augment.gather_free and 0 < alone <= (step - alone) / 4, (alone, step)


@pytest.mark.skipif(not COLAB_PYTHON.exists(), reason="needs Colab's stack in .venv-colab: bash .ci/run builds it")
def test_gap_compiles_for_colabs_tpu_with_colabs_own_stack(tmp_path):
    r = compile_for("tpu-v5e-1", tmp_path, "--recipe", "gap", python=COLAB_PYTHON)
    assert (r["versions"]["jax"], r["versions"]["flax"], r["versions"]["optax"]) == ("0.7.2", "0.11.2", "0.2.8")
    assert 0 < r["step_seconds"] and 0 < r["epoch_seconds"] < 5 and r["memory_bytes"] < 16 * GiB, r
