"""Classify your own images with a run folder's newest checkpoint.

    python -m jaxmnist.predict --checkpoint-dir DIR digit.png photo.jpg [--json PATH]

Any image Pillow opens, of any size, dark ink on light paper or light on dark, transparent or not,
is brought into MNIST's form first (`to_mnist`), as the dataset's authors did with NIST's scans.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from jaxmnist import data
from jaxmnist.checkpoint import write_json
from jaxmnist.cli import check_output, run_cli
from jaxmnist.errors import DataError
from jaxmnist.evaluate import LoadedRun, build_parser, check_run, load_run

BOX = 20  # MNIST fits each digit's longer side to 20 pixels...
SIZE = 28  # ...and centres its centre of mass in a 28x28 field
# Ink is what differs from the background by more than this fraction of the image's full contrast.
INK_THRESHOLD = 0.25
# An image whose pixels all lie within this many grey levels of its background holds no ink.
BLANK_CONTRAST = 32
TOP = 3


def to_mnist(grey_HW: np.ndarray) -> np.ndarray:
    """A greyscale picture of one digit as a 28x28 uint8 MNIST image: white ink on black, the ink's
    bounding box scaled (aspect kept, antialiased) so its longer side is 20 pixels, its centre of
    mass at the centre.

    Raises:
        ValueError: the picture holds no ink.
    """
    from PIL import Image

    grey_HW = np.asarray(grey_HW, np.float32)
    # The border is background; the ink is whatever departs furthest from it, darker or lighter.
    border = np.concatenate([grey_HW[0], grey_HW[-1], grey_HW[:, 0], grey_HW[:, -1]])
    background = float(np.median(border))
    dark_ink = background - grey_HW.min() > grey_HW.max() - background
    ink_HW = np.clip(background - grey_HW if dark_ink else grey_HW - background, 0, None)
    contrast = float(ink_HW.max())
    if contrast < BLANK_CONTRAST:
        raise ValueError(f"no ink: every pixel is within {contrast:.0f} grey levels of the background")
    ink_HW = ink_HW / contrast * 255
    rows, cols = np.nonzero(ink_HW > INK_THRESHOLD * 255)
    ink_HW = ink_HW[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    h, w = ink_HW.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Pillow's float mode keeps the grey levels exact; LANCZOS antialiases when shrinking.
    box_hw = np.clip(np.asarray(Image.fromarray(ink_HW).resize(size, Image.Resampling.LANCZOS)), 0, 255)
    # MNIST's centres of mass sit at pixel (14, 14) (the test set's mean is 13.99, 14.00).
    weights = box_hw.sum()
    com_y = (box_hw.sum(1) * np.arange(box_hw.shape[0])).sum() / weights
    com_x = (box_hw.sum(0) * np.arange(box_hw.shape[1])).sum() / weights
    top = int(np.clip(round(SIZE / 2 - com_y), 0, SIZE - box_hw.shape[0]))
    left = int(np.clip(round(SIZE / 2 - com_x), 0, SIZE - box_hw.shape[1]))
    image_HW = np.zeros((SIZE, SIZE), np.float32)
    image_HW[top: top + box_hw.shape[0], left: left + box_hw.shape[1]] = box_hw
    return np.round(image_HW).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """The file at `path` as an MNIST image; DataError naming the file if it is no image or a blank one."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            greys = _as_seen(image)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: give the path of an image file (PNG, JPEG, ...).") from None
    except (UnidentifiedImageError, OSError) as e:
        reason = "Pillow cannot read it as an image" if isinstance(e, UnidentifiedImageError) else e.strerror or e
        raise DataError(f"{path} is not an image jaxmnist can read ({reason}): give a PNG, JPEG or other "
                        "file Pillow opens.") from None
    for grey in greys:
        try:
            return to_mnist(grey)
        except ValueError as e:
            blank = e
    raise DataError(f"{path} is blank ({blank}): give a picture of one digit, dark on light or light on "
                    "dark.") from None


def _as_seen(image) -> list[np.ndarray]:
    """The picture in grey levels as a person sees it. A transparent one is composited on white, as
    a paint program's canvas shows it, then, should that leave no ink (light ink on a transparent
    canvas), on black: both views are returned, in that order."""
    from PIL import Image

    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return [np.asarray(image.convert("L"))]
    rgba = image.convert("RGBA")
    return [np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (v, v, v, 255)), rgba).convert("L"))
            for v in (255, 0)]


def predict(run: LoadedRun, images_NHW: np.ndarray) -> np.ndarray:
    """Class probabilities (softmax of the logits) of uint8 images `images_NHW` under `run`'s model."""
    evaluator = run.evaluator([len(images_NHW)])
    split = data.Split(images_NHW, np.zeros(len(images_NHW), np.int32))
    logits_NK = evaluator.logits(run.state, evaluator.put(split))
    return np.asarray(jax.nn.softmax(logits_NK, axis=-1))


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser("python -m jaxmnist.predict", "Classify images (PNG, JPEG, ...; dark on light or light "
                          "on dark, any size) with a run folder's newest checkpoint.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, one digit (or garment) each")
    args = parser.parse_args(argv)
    check_run(args.checkpoint_dir, args.step)
    check_output("--json", args.json, "Nothing was predicted.")
    images_NHW = np.stack([read_image(path) for path in args.images])

    run = load_run(args.checkpoint_dir, args.devices, args.step)
    names = data.class_names(run.config.dataset)
    probabilities_NK = predict(run, images_NHW)
    results = []
    width = max(len(path) for path in args.images)
    for path, p_K in zip(args.images, probabilities_NK):
        top = np.argsort(-p_K, kind="stable")[:TOP]
        print(f"{path:<{width}}  {names[top[0]]:<11}  top {TOP}: " + ", ".join(f"{names[k]} {p_K[k]:.2%}" for k in top))
        results.append({"file": path, "label": names[top[0]], "class": int(top[0]), "probabilities": p_K.tolist()})
    if args.json:
        write_json(args.json, results)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jaxmnist.predict`. Exit status: 0 done; 2 bad input."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
