"""Why `conv6` and `under20k` epochs take ~3x PyTorch's: their largest convolution, batch by batch.

    python benchmarks/conv_shapes.py [--repeats 3] [--json runs/conv_shapes.json]

Times one stride-1 convolution of `jaxmnist.layers.conv2d` (forward, and forward + the gradients
of input and kernel, jitted) against `torch.nn.functional.conv2d` (PyTorch's threads: every
core) for the valid 3x3 convolutions of `conv6`/`under20k` at batch 32, 64 and 128, and for
`gap`'s 14x14 16 -> 32 at batch 64 as the reference. Each time is the best of `--repeats` means
over 20 calls. JAX's 20 calls run inside one compiled loop (`lax.fori_loop`), each feeding the
next, as training runs its steps: separate calls get fresh buffers and fault their pages in every
time, which a loop, reusing its buffers, does not (the GEMM form tried in docs/speed.md
took 21 ms called alone and 4.3 in a loop for the 24x24 forward at batch 128).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import torch
import torch.nn.functional as F  # noqa: N812
from jax import lax

from jaxmnist import report
from jaxmnist.layers import conv2d

# (batch, input side, in channels, out channels, padding)
SHAPES = [(32, 24, 16, 28, 0), (64, 24, 16, 28, 0), (128, 24, 16, 28, 0), (128, 26, 8, 16, 0), (128, 9, 16, 28, 0),
          (64, 14, 16, 32, 1)]
CALLS = 20  # per timing: back to back (PyTorch) or inside one compiled loop (JAX)


def best_ms(repeats: int, fn, *args, looped: bool = False) -> float:
    """The best over `repeats` of the mean time of a call: `fn` once if it loops over CALLS itself."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(1 if looped else CALLS):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / CALLS * 1e3)
    return min(times)


def in_a_loop(fn):
    """CALLS calls of `fn(x, w) -> (dx, dw)` in one compiled loop, each fed the last one's outputs."""
    def body(_, xw):
        dx, dw = fn(*xw)
        return xw[0] + 1e-12 * dx, xw[1] + 1e-12 * dw
    return jax.jit(lambda x, w: lax.fori_loop(0, CALLS, body, (x, w)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="conv_shapes.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    print(report.benchmark_header("one convolution, JAX against PyTorch",
                                  f"; PyTorch {torch.__version__} with {os.cpu_count()} threads"))
    rows, results = [], []
    for b, side, cin, cout, pad in SHAPES:
        padding = ((pad, pad), (pad, pad))
        x = jax.random.normal(jax.random.key(0), (b, side, side, cin))
        w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.1
        # The forward's output feeds the next call through its sum per channel (one read of it,
        # which PyTorch's side does not pay): a loop-invariant call would be hoisted out of the loop.
        forward = in_a_loop(lambda x, w, p=padding: (0.0, conv2d(x, w, p).sum((0, 1, 2))))
        both = in_a_loop(jax.grad(lambda x, w, p=padding: (conv2d(x, w, p) ** 2).sum(), argnums=(0, 1)))
        xt = torch.randn(b, cin, side, side, requires_grad=True)
        wt = (torch.randn(cout, cin, 3, 3) * 0.1).requires_grad_()

        def torch_forward(xt, wt, pad):
            return F.conv2d(xt, wt, padding=pad)

        def torch_both(xt, wt, pad):
            return torch.autograd.grad((F.conv2d(xt, wt, padding=pad) ** 2).sum(), [xt, wt])

        out = side + 2 * pad - 2
        mflop = 2 * b * out * out * cout * 9 * cin / 1e6
        r = {"batch": b, "side": side, "cin": cin, "cout": cout, "padding": pad, "forward_mflop": mflop,
             "jax_forward_ms": best_ms(args.repeats, forward, x, w, looped=True),
             "torch_forward_ms": best_ms(args.repeats, torch_forward, xt, wt, pad),
             "jax_train_ms": best_ms(args.repeats, both, x, w, looped=True),
             "torch_train_ms": best_ms(args.repeats, torch_both, xt, wt, pad)}
        results.append(r)
        rows.append([f"{side}x{side} {cin}->{cout}, pad {pad}, batch {b}", f"{mflop:.0f}",
                     f"{r['jax_forward_ms']:.2f}", f"{r['torch_forward_ms']:.2f}",
                     f"{mflop / r['jax_forward_ms']:.0f}", f"{mflop / r['torch_forward_ms']:.0f}",
                     f"{r['jax_train_ms']:.2f}", f"{r['torch_train_ms']:.2f}",
                     f"**{r['jax_train_ms'] / r['torch_train_ms']:.2f}**"])
    print(report.markdown_table(["convolution", "forward MFLOP", "JAX fwd ms", "PyTorch fwd ms", "JAX GFLOP/s",
                                 "PyTorch GFLOP/s", "JAX fwd+bwd ms", "PyTorch fwd+bwd ms", "JAX / PyTorch"], rows))
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
