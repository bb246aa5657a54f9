"""Why a `lax.scan` over training steps ran ~10x slower than a Python loop on XLA:CPU, in one table.

    python benchmarks/scan_repro.py [--steps 50] [--repeats 3]

Cause: XLA:CPU's ConvCanonicalization pass rewrites only the entry computation's convolutions into
the NHWC/HWIO layout its fast (Eigen) kernel needs; a scan body is a separate computation, so the
backward-pass convolutions autodiff emits (weight gradient `f01b_i01o->01bf`, input gradient
`b01f_01oi->b01f`) fall back to XLA's naive convolution loop there. `jaxmnist.layers.conv2d` spells
its backward pass with canonical convolutions and a GEMM, so its scanned steps stay fast.

The script trains the `gap` model (batch 64, the gap recipe's optimiser) for `--steps` steps in
four ways: {autodiff of lax.conv, jaxmnist conv2d} x {Python loop of jitted steps, one jitted
lax.scan}, and prints steps/s (median of `--repeats`, compilation excluded) with the distinct
convolution layouts found in the compiled scan's HLO.
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from jaxmnist import layers, report, sharding
from jaxmnist.models import GAP
from jaxmnist.optim import make_optimizer
from jaxmnist.programs import train_step
from jaxmnist.recipes import RECIPES


def build(conv_fn):
    """A gap model + optimiser whose convolutions call `conv_fn`; its state; a jitted step."""
    original = layers.conv_general_dilated
    layers.conv_general_dilated = conv_fn  # read by layers.conv() when the model is built
    try:
        model = GAP(dropout=0.1, rngs=nnx.Rngs(0))
    finally:
        layers.conv_general_dilated = original
    optimizer = nnx.Optimizer(model, make_optimizer(RECIPES["gap"], 844), wrt=nnx.Param)
    model.train()
    graphdef, state = nnx.split((model, optimizer))
    one_device = sharding.batch_split(sharding.make_mesh(1))
    return state, functools.partial(train_step, graphdef, batch_size=64, mean=0.1307, std=0.3081, split=one_device)


def time_loop(step, state, args, steps: int) -> tuple[float, str]:
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(state, jnp.zeros(3), *args, np.int32(0)).compile()
    metrics = jnp.zeros(3)
    state, metrics = compiled(state, metrics, *args, np.int32(0))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = compiled(state, metrics, *args, np.int32(i * 64))
    jax.block_until_ready(metrics)
    return steps / (time.perf_counter() - start), ""


def time_scan(step, state, args, steps: int) -> tuple[float, str]:
    def epoch(state, metrics, *args):
        def body(carry, i):
            return step(*carry, *args, i * 64), None
        return lax.scan(body, (state, metrics), jnp.arange(steps, dtype=jnp.int32))[0]

    compiled = jax.jit(epoch, donate_argnums=(0, 1)).lower(state, jnp.zeros(3), *args).compile()
    layouts = sorted(set(re.findall(r"dim_labels=([\w>-]+)", compiled.as_text())))
    state, metrics = compiled(state, jnp.zeros(3), *args)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    state, metrics = compiled(state, metrics, *args)
    jax.block_until_ready(metrics)
    return steps / (time.perf_counter() - start), " ".join(layouts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    n = args.steps * 64
    rng = np.random.default_rng(0)
    data_args = (jax.device_put(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                 jax.device_put(rng.integers(0, 10, n, dtype=np.int32)), jnp.arange(n, dtype=jnp.int32))
    print(report.benchmark_header("lax.scan against a loop of jitted steps on XLA:CPU"))
    rows = []
    for name, conv_fn in (("lax.conv_general_dilated + autodiff", lax.conv_general_dilated),
                          ("jaxmnist.layers.conv2d", layers.conv_general_dilated)):
        runs, layouts = {"loop": [], "scan": []}, ""
        for _ in range(args.repeats):  # alternate loop and scan so that machine noise hits both
            for kind, timer in (("loop", time_loop), ("scan", time_scan)):
                state, step = build(conv_fn)
                rate, found = timer(step, state, data_args, args.steps)
                runs[kind].append(rate)
                layouts = found or layouts
        loop, scan = statistics.median(runs["loop"]), statistics.median(runs["scan"])
        rows.append([name, f"{loop:.1f}", f"{scan:.1f}", f"{scan / loop:.2f}", layouts])
    print(report.markdown_table(["convolution", "loop steps/s", "scan steps/s", "scan / loop",
                                 "convolution layouts in the scan"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
