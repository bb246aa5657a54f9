"""Where a `gap` training step's time goes: each layer's forward + backward, JAX against PyTorch.

    python benchmarks/layer_costs.py [--repeats 5] [--calls 20] [--json runs/layer_costs.json]

For the gap model at batch 64, times forward + backward (the gradients training needs: the
weights' and, past the first layer, the input's) of every layer alone: in JAX with
`jaxmnist.layers` (NHWC, one jitted function per layer) and in PyTorch (NCHW, 2 threads by
default, `torch.autograd.grad`). Then the whole train step: the compiled chunk `Trainer` runs
(50 steps in one call, Adam, data gathered on the device) against PyTorch's loop body (forward,
backward, clip, Adam). FLOPs count the multiply-adds of convolutions and matrix products (2 per
MAC, backward twice the forward, once for the first layer); the elementwise layers' FLOPs are
negligible and their GFLOP/s is left blank. Each time is the median over `--repeats` of the mean
over `--calls` back-to-back calls. Data are random: timings do not depend on values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax import nnx

from jaxmnist import data, layers, report
from jaxmnist.recipes import RECIPES
from jaxmnist.torch_ref import build_torch, make_torch_optimizer
from jaxmnist.trainer import PROGRESS_EVERY, Trainer

B = 64
PAD = ((1, 1), (1, 1))
# name, input (H, W, C), output channels (0: not a convolution)
LAYERS = [("conv1 1->16 @28", (28, 28, 1), 16), ("bn1 + relu", (28, 28, 16), 0), ("pool1", (28, 28, 16), 0),
          ("conv2 16->32 @14", (14, 14, 16), 32), ("bn2 + relu", (14, 14, 32), 0), ("pool2", (14, 14, 32), 0),
          ("conv3 32->64 @7", (7, 7, 32), 64), ("bn3 + relu", (7, 7, 64), 0), ("pool3", (7, 7, 64), 0),
          ("head: GAP, linear 64->10, loss", (3, 3, 64), 10)]


def flops(name: str, hwc: tuple[int, int, int], cout: int) -> int:
    h, w, c = hwc
    if name.startswith("conv"):
        return 2 * B * h * w * 9 * c * cout * (2 if c == 1 else 3)
    return 2 * B * c * cout * 3 if name.startswith("head") else 0


def median_ms(fn, repeats: int, calls: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)


def jax_layer(name: str, hwc: tuple[int, int, int], cout: int):
    """A no-argument function running the layer's jitted forward + backward on fixed inputs."""
    h, w, c = hwc
    rngs, key = nnx.Rngs(0), jax.random.key(0)
    x = jax.random.normal(key, (B, h, w, c))
    if name.startswith("conv"):
        fn, params = (lambda p, x: layers.conv2d(x, p, PAD)), jax.random.normal(key, (3, 3, c, cout)) * 0.1
    elif name.startswith("bn"):
        graphdef, *params = nnx.split(layers.batch_norm(c, rngs=rngs), nnx.Param, ...)  # (Params, BatchStats)
        fn = lambda p, x: nnx.relu(nnx.merge(graphdef, *p)(x))  # noqa: E731
    elif name.startswith("pool"):
        fn, params = (lambda p, x: layers.max_pool_2x2(x)), jnp.zeros(())
    else:
        labels = jnp.arange(B) % cout
        fn = lambda p, x: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
            x.mean(axis=(1, 2)) @ p, labels).mean()
        params = jax.random.normal(key, (c, cout)) * 0.1

    @jax.jit
    def step(p, x):
        out, vjp = jax.vjp(fn, p, x)
        grads = vjp(jnp.ones_like(out))
        return grads if c > 1 else grads[0]  # the first layer's input needs no gradient

    return lambda: step(params, x)


def torch_layer(name: str, hwc: tuple[int, int, int], cout: int):
    """The same in PyTorch (NCHW), with `torch.autograd.grad`."""
    h, w, c = hwc
    x = torch.randn(B, c, h, w, requires_grad=c > 1)
    fn = module = {"conv": lambda: torch.nn.Conv2d(c, cout, 3, padding=1, bias=False),
                   "bn": lambda: torch.nn.Sequential(torch.nn.BatchNorm2d(c), torch.nn.ReLU()),
                   "pool": lambda: torch.nn.MaxPool2d(2),
                   "head": lambda: torch.nn.Linear(c, cout, bias=False)}[name.split()[0].rstrip("123:")]()
    if name.startswith("head"):
        labels = torch.arange(B) % cout
        fn = lambda x: F.cross_entropy(module(x.mean((2, 3))), labels)  # noqa: E731
    inputs = [*module.parameters(), *([x] if c > 1 else [])]

    def run():
        out = fn(x)
        return torch.autograd.grad(out, inputs, torch.ones_like(out))

    return run


def jax_step(repeats: int) -> float:
    """ms per step of the compiled `PROGRESS_EVERY`-step chunk that `Trainer.train_epoch` calls."""
    rng = np.random.default_rng(0)
    n = B * PROGRESS_EVERY
    split = data.Split(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32))
    trainer = Trainer(dataclasses.replace(RECIPES["gap"], val_size=0), split, split)
    args = (trainer.train.images_NHW, trainer.train.labels_N, trainer._shuffle(0), trainer.augment_keys, np.int32(0),
            np.int32(PROGRESS_EVERY))

    def chunk():
        trainer.state, metrics = trainer._chunk(trainer.state, jnp.zeros(3), *args)
        return metrics

    return median_ms(chunk, repeats, 1) / PROGRESS_EVERY


def torch_step(repeats: int, calls: int) -> float:
    config = RECIPES["gap"]
    model = build_torch("gap", config.dropout).train()
    opt = make_torch_optimizer(config, model, 844)[0]
    x, y = torch.randn(B, 1, 28, 28), torch.randint(0, 10, (B,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if config.clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
        opt.step()

    return median_ms(step, repeats, calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timings per layer; the median is reported")
    parser.add_argument("--calls", type=int, default=20, help="back-to-back calls per timing")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads (default: every core)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    for name, hwc, cout in LAYERS:
        f = flops(name, hwc, cout)
        jax_ms = median_ms(jax_layer(name, hwc, cout), args.repeats, args.calls)
        torch_ms = median_ms(torch_layer(name, hwc, cout), args.repeats, args.calls)
        rows.append({"layer": name, "flops": f, "jax_ms": jax_ms, "torch_ms": torch_ms})
    total = sum(r["flops"] for r in rows)
    rows.append({"layer": "sum of the layers", "flops": total, "jax_ms": sum(r["jax_ms"] for r in rows),
                 "torch_ms": sum(r["torch_ms"] for r in rows)})
    rows.append({"layer": "train step (+ Adam, data)", "flops": total, "jax_ms": jax_step(args.repeats),
                 "torch_ms": torch_step(args.repeats, args.calls)})

    def gflops(f: int, ms: float) -> str:
        return f"{f / ms / 1e6:.1f}" if f else ""

    print(report.benchmark_header("gap: forward + backward per layer, batch 64",
                                  f"; PyTorch {torch.__version__} with {args.threads} threads"))
    print(report.markdown_table(
        ["layer", "MFLOP", "JAX ms", "PyTorch ms", "JAX GFLOP/s", "PyTorch GFLOP/s", "JAX / PyTorch"],
        [[r["layer"], f"{r['flops'] / 1e6:.1f}" if r["flops"] else "", f"{r['jax_ms']:.3f}", f"{r['torch_ms']:.3f}",
          gflops(r["flops"], r["jax_ms"]), gflops(r["flops"], r["torch_ms"]), f"{r['jax_ms'] / r['torch_ms']:.2f}"]
         for r in rows]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "device": report.device_description(), "versions": report.versions()}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
