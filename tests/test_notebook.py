"""The Colab notebook, executed top to bottom on CPU as CI's step budget runs it: what Colab runs
is what CI runs."""

import json
from pathlib import Path

import nbclient
import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "jaxmnist_colab.ipynb"


def outputs_text(notebook) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.extend(output.get("data", {}).get(kind, "") for kind in ("text/plain", "text/markdown"))
            if output.get("output_type") == "error":
                texts.append("\n".join(output["traceback"]))
    return "\n".join(texts)


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") and not cell.get("execution_count")
               for cell in notebook.cells if cell.cell_type == "code"), "clear the outputs before committing"
    assert "colab.research.google.com/github/jaxmnist/jaxmnist/blob/main/notebooks/jaxmnist_colab.ipynb" in (
        notebook.cells[0].source)


def test_the_notebook_runs_top_to_bottom(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMNIST_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("JAXMNIST_DATA_DIR", str(mnist_dir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = outputs_text(notebook)
    assert f"repository: {NOTEBOOK.parents[1]}, fast: True" in text  # nothing was installed or cloned
    assert "cpu device" in text
    gap = json.loads((tmp_path / "gap.json").read_text())
    assert gap["train_images"] == 640 and gap["params"] == 24_048
    assert 0.2 < gap["test_accuracy"] <= 1  # 10 steps of 64: above chance
    assert "| gap (batch 64, 1 epoch(s)) | 24,048 | 640 |" in text
    assert "| gap (batch 512, 2 epoch(s)) | 24,048 | 640 |" in text
    assert "| gap | 24,048 | 24,048 | yes |" in text  # benchmarks/params.py
    runs = json.loads((tmp_path / "accuracy.json").read_text())  # benchmarks/accuracy.py
    assert [(r["config"]["batch_size"], r["seed"]) for r in runs] == [(64, 0), (512, 0)]
    assert "| gap-b512 | 24,048 | 1 |" in text
