"""The end-of-run summary: a dict that scripts read as JSON, and the text people read."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import jax

from jaxmnist.results import Result


def device_description() -> str:
    """What JAX runs on, e.g. "1 cpu device (AMD EPYC 7B13, 2 cores)" or "8 tpu devices (TPU v5 lite)"."""
    devices = jax.devices()
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        kind = f"{_cpu_model() or kind}, {os.cpu_count()} cores"
    plural = "s" if len(devices) > 1 else ""
    return f"{len(devices)} {devices[0].platform} device{plural} ({kind})"


def process_seconds() -> float:
    """Seconds since this process started (Linux: from /proc, 10 ms resolution; elsewhere: since
    jaxmnist was imported)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def versions(*optional: str) -> dict[str, str]:
    """The versions of Python and the libraries that make the numbers, and of the `optional`
    distributions (e.g. libtpu) that are installed."""
    found = {}
    for name in optional:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    names = ("jax", "jaxlib", "flax", "optax", "numpy")
    return {"python": platform.python_version(), **{n: importlib.metadata.version(n) for n in names}, **found}


def summary(result: Result) -> dict:
    """The run as one JSON-ready dict; accuracies are fractions in [0, 1]."""
    config = result.config
    return {
        "arch": config.arch,
        "dataset": config.dataset,
        "params": result.params,
        "seed": config.seed,
        "epochs": config.epochs,
        "test_accuracy": result.test_accuracy,
        "val_accuracy": result.val_accuracy,
        "train_seconds": result.train_seconds,
        "compile_seconds": result.compile_seconds,
        "eval_seconds": result.epochs[-1].eval_seconds,
        "phases": result.phases,
        "images_per_second": result.images_per_second,
        "train_images": result.train_images,
        "per_epoch": [dataclasses.asdict(e) for e in result.epochs],
        "device": device_description(),
        "jax_version": jax.__version__,
        "versions": versions(),
        "config": dataclasses.asdict(config),
    }


def format_summary(s: dict) -> str:
    val = "n/a (the recipe has no validation split)" if s["val_accuracy"] is None else f"{s['val_accuracy']:.2%}"
    rows = [
        ("model", f"{s['arch']} ({s['params']:,} parameters)"),
        ("data", f"{s['dataset']}, {s['train_images']:,} training images, seed {s['seed']}"),
        ("test accuracy", f"{s['test_accuracy']:.2%}"),
        ("val accuracy", val),
        ("training", f"{s['train_seconds']:.2f} s for {s['epochs']} epoch(s), "
                     f"{s['images_per_second']:,.0f} images/s (compilation excluded)"),
        ("compilation", f"{s['compile_seconds']:.2f} s"),
        ("evaluation", f"{s['eval_seconds']:.2f} s"),
        *([("wall time", f"{s['wall_seconds']:.2f} s from process start: " + ", ".join(
            f"{k} {v:.2f}" for k, v in s["phases"].items()))] if "wall_seconds" in s else []),
        ("device", s["device"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in s["versions"].items())),
    ]
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    return text if len(s["per_epoch"]) == 1 else text + "\n\n" + format_epochs(s["per_epoch"])


def format_epochs(per_epoch: list[dict]) -> str:
    """The learning curve of a multi-epoch run, one row per epoch."""
    rows = [[str(e["epoch"]), f"{e['train_loss']:.4f}", f"{e['train_accuracy']:.2%}",
             "n/a" if e["val_accuracy"] is None else f"{e['val_accuracy']:.2%}", f"{e['test_accuracy']:.2%}",
             f"{e['train_seconds']:.2f}"] for e in per_epoch]
    return markdown_table(["epoch", "train loss", "train acc", "val acc", "test acc", "train s"], rows)


def benchmark_header(title: str, device_note: str = "", optional: tuple[str, ...] = ()) -> str:
    """The lines every benchmark prints first: what ran, on what, with which versions (the
    `optional` distributions' too, where installed)."""
    command = shlex.join(["python", *sys.argv])
    return (f"# {title}\n\ncommand: `{command}`  \ndevice: {device_description()}{device_note}  \n"
            "versions: " + ", ".join(f"{k} {v}" for k, v in versions(*optional).items()) + "\n")


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    """A markdown table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
