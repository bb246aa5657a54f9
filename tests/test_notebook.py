"""The notebook, executed on CPU as CI's step budget runs it: top to bottom on eight forced CPU devices (as on
Kaggle's TPU v5e-8), and through its choice of recipe on one (as on Colab's TPU v5e-1 or T4)."""

import json
from pathlib import Path

import nbclient
import nbformat
import pytest

from jaxmnist.recipes import RECIPES

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "jaxmnist_colab.ipynb"
ON_GITHUB = "jaxmnist/jaxmnist/blob/main/notebooks/jaxmnist_colab.ipynb"  # where the badges open it from


def outputs_text(notebook) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.extend(output.get("data", {}).get(kind, "") for kind in ("text/plain", "text/markdown"))
            if output.get("output_type") == "error":
                texts.append("\n".join(output["traceback"]))
    return "\n".join(texts)


def notebook_function(name: str):
    """A function of the notebook, defined by running the one cell that defines it (and nothing else)."""
    cell = next(c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.source.startswith(f"def {name}("))
    namespace = {}
    exec(cell.source, namespace)
    return namespace[name]


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") and not cell.get("execution_count")
               for cell in notebook.cells if cell.cell_type == "code"), "clear the outputs before committing"
    header = notebook.cells[0].source
    assert f"https://colab.research.google.com/github/{ON_GITHUB}" in header
    assert f"https://kaggle.com/kernels/welcome?src=https://github.com/{ON_GITHUB}" in header


@pytest.mark.parametrize("device_count, plan", [(1, ("gap", 1)), (2, ("gap", 2)), (3, ("gap", 2)), (4, ("gap", 4)),
                                                (6, ("gap", 4)), (8, ("gap-b512", 8)), (16, ("gap-b512", 8))])
def test_the_recipe_follows_the_device_count(device_count, plan):
    recipe, devices = notebook_function("recipe_for")(device_count)
    assert (recipe, devices) == plan
    config = RECIPES[recipe]
    last_batch = (60_000 - config.val_size) % config.batch_size
    assert config.batch_size % devices == 0 and last_batch % devices == 0  # or training refuses the split


def run_notebook(folder: Path, monkeypatch, devices: int, through: str | None = None) -> str:
    """The outputs of the notebook executed in `folder` on `devices` CPU devices, as CI's step budget runs it: every
    cell, or those up to the first whose source contains `through`."""
    monkeypatch.setenv("JAXMNIST_NOTEBOOK_FAST", "1")
    # The kernel is a subprocess that inherits this environment, so JAX starts there with these CPU devices.
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count={devices}")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    if through is not None:
        notebook.cells = notebook.cells[:next(i for i, c in enumerate(notebook.cells) if through in c.source) + 1]
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}}).execute()
    text = outputs_text(notebook)
    assert f"repository: {NOTEBOOK.parents[1]}, fast: True" in text  # nothing was installed or cloned
    return text


def test_on_one_device_the_notebook_picks_the_batch_64_recipe(tmp_path, monkeypatch):
    text = run_notebook(tmp_path, monkeypatch, devices=1, through="recipe_for(jax.device_count())")
    assert "1 cpu device (" in text and "recipe gap: batches of 64 on one device" in text


def test_the_notebook_runs_top_to_bottom_on_eight_devices(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMNIST_DATA_DIR", str(mnist_dir))
    text = run_notebook(tmp_path, monkeypatch, devices=8)
    assert "8 cpu devices (" in text
    assert "recipe gap-b512: batches of 512 split over 8 devices, 64 images each" in text
    run = json.loads((tmp_path / "run.json").read_text())
    assert (run["config"]["batch_size"], run["config"]["devices"], run["epochs"]) == (512, 8, 2)
    assert run["train_images"] == 640 and run["params"] == 24_048 and run["device"].startswith("8 cpu devices (")
    assert "| gap | 24,048 | 24,048 | yes |" in text  # benchmarks/params.py
    runs = json.loads((tmp_path / "accuracy.json").read_text())  # benchmarks/accuracy.py
    assert [(r["config"]["batch_size"], r["config"]["devices"], r["seed"]) for r in runs] == [(512, 8, 0)]
    assert "| gap-b512 | 24,048 | 1 |" in text
