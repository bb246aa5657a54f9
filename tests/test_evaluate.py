"""jaxmnist.evaluate, jaxmnist.predict and jaxmnist.plot on the session's trained run folder."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxmnist import data, evaluate, plot, predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trained_accuracy(trained_run) -> float:
    return json.loads((trained_run.parent / "train.json").read_text())["test_accuracy"]


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    """The CLI's JSON and PNG for the trained run, and what it printed."""
    out = tmp_path_factory.mktemp("evaluate")
    argv = ["--checkpoint-dir", str(trained_run), "--json", str(out / "eval.json"), "--png", str(out / "eval.png")]
    assert evaluate.main(argv) == 0
    return json.loads((out / "eval.json").read_text()), out / "eval.png"


@pytest.fixture(scope="module")
def loaded(trained_run):
    return evaluate.load_run(trained_run)


def test_accuracy_is_the_trained_runs_exactly(evaluated, trained_run):
    result, _ = evaluated
    assert result["test_accuracy"] == trained_accuracy(trained_run)


def test_per_class_and_confusion_matrix_agree(evaluated):
    result, _ = evaluated
    confusion_KK = np.array(result["confusion_matrix"])
    assert confusion_KK.shape == (10, 10) and confusion_KK.sum() == 10_000
    np.testing.assert_allclose(np.diag(confusion_KK) / confusion_KK.sum(1), result["per_class_accuracy"])
    assert np.trace(confusion_KK) / 10_000 == pytest.approx(result["test_accuracy"])
    confidences = [m["confidence"] for m in result["mistakes"]]
    assert confidences == sorted(confidences, reverse=True)
    assert all(m["true"] != m["predicted"] for m in result["mistakes"])


def test_png_has_a_sensible_size(evaluated):
    _, png = evaluated
    with Image.open(png) as image:
        assert image.format == "PNG" and 800 <= image.width <= 2500 and 400 <= image.height <= 1200


def test_restores_onto_8_devices_with_the_same_accuracy(trained_run, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    run = subprocess.run([sys.executable, "-m", "jaxmnist.evaluate", "--checkpoint-dir", str(trained_run),
                          "--devices", "8", "--json", str(tmp_path / "eval8.json")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "eval8.json").read_text())["test_accuracy"] == trained_accuracy(trained_run)


@pytest.mark.parametrize("argv, says", [
    (["--checkpoint-dir", "/no/such/run"], "is not a folder"),
    (["--checkpoint-dir", "{tmp}"], "holds no checkpoint"),
    (["--checkpoint-dir", "{run}", "--json", "/no/such/folder/x.json"], "does not exist"),
])
def test_bad_input_exits_2_naming_the_fix(argv, says, trained_run, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, run=trained_run) for a in argv]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and err.count("\n") == 1


def test_fashion_names():
    assert data.class_names("fashion_mnist")[9] == "Ankle boot"
    assert data.class_names("mnist")[3] == "3"


def test_to_mnist_keeps_an_mnist_digit(mnist):
    """An MNIST digit, enlarged onto a bigger dark-on-light canvas, comes back close to itself and centred."""
    for digit_HW in mnist.test.images_NHW[:20]:
        assert np.abs(predict.to_mnist(digit_HW).astype(int) - digit_HW).mean() < 2  # its own form already
        back_HW = predict.to_mnist(on_canvas(digit_HW, 56, invert=True))
        assert np.corrcoef(back_HW.ravel(), digit_HW.ravel())[0, 1] > 0.7
        weights = back_HW.astype(float)
        com = [(weights.sum(axis) * np.arange(28)).sum() / weights.sum() for axis in (1, 0)]
        np.testing.assert_allclose(com, 14, atol=0.6)
        assert back_HW.max() > 240  # full contrast, less what antialiasing smooths off the peaks


def test_to_mnist_refuses_a_blank_image():
    with pytest.raises(ValueError, match="no ink"):
        predict.to_mnist(np.full((30, 40), 200, np.uint8))


def on_canvas(digit_HW: np.ndarray, size: int, invert: bool = False) -> np.ndarray:
    """`digit_HW` enlarged to `size` pixels on a non-square canvas with margins, optionally dark on light."""
    big = np.asarray(Image.fromarray(digit_HW).resize((size, size), Image.Resampling.BICUBIC))
    canvas = np.zeros((size + 30, size + 12), np.uint8)
    canvas[8: 8 + size, 5: 5 + size] = big
    return 255 - canvas if invert else canvas


def test_predict_reads_digits_in_both_polarities(loaded, mnist, tmp_path, capsys):
    # Digits the model gets right with high confidence, so that only the conversion can fail them.
    probabilities_NK = predict.predict(loaded, mnist.test.images_NHW[:40])
    sure = [i for i, p in enumerate(probabilities_NK) if p.argmax() == mnist.test.labels_N[i] and p.max() > 0.97][:4]
    assert len(sure) == 4
    files, labels = [], []
    for i in sure:
        digit_HW = mnist.test.images_NHW[i]
        for name, image in ((f"{i}.png", digit_HW), (f"{i}_dark_on_light.jpg", on_canvas(digit_HW, 56, True)),
                            (f"{i}_large.png", on_canvas(digit_HW, 120))):
            Image.fromarray(image).convert("RGB").save(tmp_path / name)
            files.append(str(tmp_path / name))
            labels.append(str(mnist.test.labels_N[i]))
    assert predict.main(["--checkpoint-dir", str(loaded.path), *files, "--json", str(tmp_path / "p.json")]) == 0
    results = json.loads((tmp_path / "p.json").read_text())
    assert [r["label"] for r in results] == labels
    assert all(len(r["probabilities"]) == 10 and sum(r["probabilities"]) == pytest.approx(1) for r in results)
    assert files[0] in capsys.readouterr().out


@pytest.mark.parametrize("make", ["text", "missing"])
def test_predict_refuses_what_is_not_an_image(make, trained_run, tmp_path, capsys):
    path = tmp_path / "notes.txt"
    if make == "text":
        path.write_text("seven\n")
    assert predict.main(["--checkpoint-dir", str(trained_run), str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err


def test_plot_draws_the_learning_curves(trained_run, tmp_path):
    png = tmp_path / "curves.png"
    plot.learning_curves(trained_run / "metrics.jsonl", png)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 1000 and image.height > 300
    assert plot.main(["--checkpoint-dir", str(trained_run), str(tmp_path / "cli.png")]) == 0
    assert plot.main(["--metrics", str(tmp_path / "none.jsonl"), str(png)]) == 2


def test_predict_reads_transparent_digits_as_they_are_seen(loaded, mnist, tmp_path):
    """A digit drawn in a paint program on a transparent canvas: the ink in the alpha channel, black
    or white. Each reads as the same digit saved as plain grey levels."""
    digits_NHW = mnist.test.images_NHW[:10]
    files = {}
    for i, digit_HW in enumerate(digits_NHW):
        for colour in (0, 255):
            rgba_HW4 = np.zeros((*digit_HW.shape, 4), np.uint8)
            rgba_HW4[..., :3], rgba_HW4[..., 3] = colour, digit_HW
            files[(i, colour)] = tmp_path / f"{i}_{colour}.png"
            Image.fromarray(rgba_HW4, "RGBA").save(files[(i, colour)])
    for (i, _), path in files.items():
        np.testing.assert_array_equal(predict.read_image(path), predict.to_mnist(digits_NHW[i]))
    plain = predict.predict(loaded, np.stack([predict.to_mnist(d) for d in digits_NHW]))
    seen = predict.predict(loaded, np.stack([predict.read_image(files[(i, 0)]) for i in range(10)]))
    np.testing.assert_array_equal(seen, plain)
