"""The benchmark scripts that double as checks."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_params_exits_zero_on_the_registry(capsys):
    assert load("params").main([]) == 0
    out = capsys.readouterr().out
    assert "| gap | 24,048 | 24,048 | yes |" in out and "| fc1 | bias 88, kernel 216x88 | 19,096 |" in out


def test_params_exits_non_zero_when_a_count_is_off(monkeypatch, capsys):
    params = load("params")
    monkeypatch.setitem(params.DOCUMENTED_PARAMS, "gap", 24_049)
    assert params.main([]) == 1
    assert "gap: 24,048 parameters, its write-up documents 24049" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["accelerators", "accuracy", "augmentation", "checkpoints", "compare", "endtoend",
                                    "layer_costs", "record", "scan_repro", "torch_plain"])
def test_benchmark_scripts_parse_their_arguments(script):
    with pytest.raises(SystemExit) as exit_:
        load(script).main(["--help"])
    assert exit_.value.code == 0


def test_scan_repro_runs_and_finds_the_non_canonical_layouts(capsys):
    assert load("scan_repro").main(["--steps", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| lax.conv_general_dilated + autodiff |" in out and "f01b_i01o->01bf" in out
    assert "| jaxmnist.layers.conv2d |" in out


def test_augmentation_grid_is_written(mnist_dir, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    from PIL import Image

    png = tmp_path / "grid.png"
    assert load("augmentation").main(["--pairs", "0", "--png", str(png), "--data-dir", str(mnist_dir)]) == 0
    with Image.open(png) as image:
        assert image.width > 400 and image.height > 300


def test_torch_plain_runs_and_reports_its_phases(mnist_dir, tmp_path):
    pytest.importorskip("torch", reason="the torch extra is not installed")
    out = tmp_path / "torch.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "torch_plain.py"), "--arch", "fc", "--data-dir",
                           str(mnist_dir), "--train-size", "640", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    phases = result["phases"]
    assert set(phases) == {"imports", "data", "init", "compile", "train", "eval", "total"}
    assert 0 <= result["test_accuracy"] <= 1 and result["val_accuracy"] is None
    assert phases["total"] == result["wall_seconds"] >= sum(v for k, v in phases.items() if k != "total") > 0


def test_record_ablations_report_validation_only_and_final_reports_test(mnist_dir, tmp_path, capsys):
    record = load("record")
    out = tmp_path / "ablations.json"
    assert record.main(["--rows", "base", "ema 0.99", "--seeds", "2", "--train-size", "640", "--data-dir",
                        str(mnist_dir), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| lever | params | seeds | val mean |" in text and "| ema 0.99 | 24,938 | 2 |" in text
    assert "test" not in text[text.index("| lever"):]  # the header names the command, which may say "test"
    runs = json.loads(out.read_text())
    assert len(runs) == 4 and all("test_accuracy" not in json.dumps(r) for r in runs)
    assert record.main(["--final", "--seeds", "1", "--train-size", "640", "--data-dir", str(mnist_dir), "--json",
                        str(tmp_path / "final.json")]) == 0
    assert "| record | gap4 | 24,938 | 1 |" in capsys.readouterr().out
