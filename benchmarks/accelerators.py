"""Every recipe compiled for TPU and GPU targets on this machine, as `python -m jaxmnist.compile` does it:
XLA's estimates (not measurements) of each one's epoch, its memory, and what the platform forms and
the augmentation cost there.

    python benchmarks/accelerators.py --json runs/accelerators.json
    python benchmarks/accelerators.py --targets tpu-v5e-1 --recipes gap res8k

Needs the targets' compilers: `pip install "jax[tpu]==<jax version>"` for TPUs and
`pip install "jax[cuda12]==<jax version>"` for GPUs (both may sit in one environment; a target whose
compiler is missing is left out, saying so). Three tables:
- recipe x target: estimated seconds per step and per epoch (training; evaluation apart), the memory
  a device needs, compile seconds here. Each row is `python -m jaxmnist.compile --target T --recipe R`.
- the platform forms: each recipe on the TPU v5e-1 in the CPU's forms (`layers.conv2d`, evaluation
  in `lax.map` batches, augmentation by gathers) against the forms `jaxmnist.platforms` chooses there.
- augmentation: the augmented recipes' step with and without their augmentation (`--rotate 0
  --translate 0 --scale 0 --crop-p 0`), and its share of the un-augmented step.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxmnist import platforms, report, targets  # noqa: E402
from jaxmnist.checkpoint import write_json  # noqa: E402
from jaxmnist.compile import compile_run  # noqa: E402
from jaxmnist.errors import ConfigError  # noqa: E402
from jaxmnist.recipes import RECIPES  # noqa: E402

RECIPE_NAMES = ("fc", "gap", "conv6", "under20k", "res8k", "record", "gap-b512")
NO_AUGMENTATION = dict(rotate=0.0, translate=0.0, scale=0.0, crop_p=0.0)


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.3f}"


def eval_block_seconds(r: dict) -> float | None:
    """A report's estimated seconds for one evaluation block."""
    evaluation = r["programs"][-1]
    block = int(evaluation["unit"].split()[-1].replace(",", ""))
    batches = block // platforms.EVAL_BATCH if r["forms"] == platforms.CPU else 1
    return None if evaluation["seconds"] is None else evaluation["seconds"] * batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=[t for t in targets.TARGETS if t != "cpu"],
                        choices=[t for t in targets.TARGETS if t != "cpu"])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPE_NAMES), choices=tuple(RECIPES))
    parser.add_argument("--json", metavar="PATH", help="also write every report as JSON to PATH")
    args = parser.parse_args(argv)
    jax.config.update("jax_platforms", "cpu")  # the targets' devices are not here

    meshes = {}
    for name in args.targets:
        try:
            meshes[name] = targets.mesh(targets.TARGETS[name])
        except ConfigError as e:
            print(f"left out: {e}", file=sys.stderr)
    print(report.benchmark_header("Compiled for TPU and GPU: XLA's estimates, not measurements",
                                  f" (compiling for {', '.join(meshes)})", optional=targets.COMPILERS))

    rows, reports = [], []
    for name, mesh in meshes.items():
        target = targets.TARGETS[name]
        for recipe in args.recipes:
            config = RECIPES[recipe]
            if config.batch_size % mesh.size:
                continue  # e.g. gap's batch 64 leaves 8 images a chip on a v5e-8: that is gap-b512's case
            r = compile_run(config, recipe, target, mesh)
            reports.append(r)
            print(f"{name} {recipe}: {ms(r['step_seconds'])} ms a step, compiled in {r['compile_seconds']:.0f} s",
                  file=sys.stderr, flush=True)
            rows.append([recipe, name, r["estimate"].split(" from")[0], f"{r['steps_per_epoch']:,}",
                         ms(r["step_seconds"]),
                         "n/a" if r["epoch_seconds"] is None else f"{r['epoch_seconds']:.3f}",
                         "n/a" if r["eval_seconds"] is None else f"{r['eval_seconds']:.3f}",
                         f"{max(p['memory_bytes'] for p in r['programs']) / 2**20:,.1f}",
                         f"{r['compile_seconds']:.0f}"])
    print(report.markdown_table(["recipe", "target", "estimate", "steps", "ms/step", "epoch s", "eval s",
                                 "memory MiB", "compile s"], rows))

    tpu = next((n for n in meshes if targets.TARGETS[n].platform == "tpu" and meshes[n].size == 1), None)
    if tpu is not None:
        target, mesh = targets.TARGETS[tpu], meshes[tpu]
        rows = []
        for recipe in args.recipes:
            if RECIPES[recipe].batch_size % mesh.size:
                continue
            chosen = next(r for r in reports if r["target"] == tpu and r["recipe"] == recipe)
            cpu_forms = compile_run(RECIPES[recipe], recipe, target, mesh, forms=platforms.CPU)
            reports.append(cpu_forms)
            rows.append([recipe, ms(cpu_forms["step_seconds"]), ms(chosen["step_seconds"]),
                         ms(eval_block_seconds(cpu_forms)), ms(eval_block_seconds(chosen))])
        print(f"\nThe platform forms on {tpu}: estimated ms per training step and per evaluation block\n")
        print(report.markdown_table(["recipe", "step, CPU forms", "step, TPU forms", "eval block, CPU forms*",
                                     "eval block, TPU forms"], rows))
        print(f"\n* the cost model costs a loop's body once: the CPU forms' evaluation block is its batch of "
              f"{platforms.EVAL_BATCH} times the batches in a block. n/a: the cost model gave no estimate (a "
              "negative one: the CPU convolutions' batch slices in `lax.map`).")

        rows = []
        for recipe in args.recipes:
            config = RECIPES[recipe]
            if not any(getattr(config, k) for k in NO_AUGMENTATION):
                continue
            with_it = next(r for r in reports if r["target"] == tpu and r["recipe"] == recipe and r["forms"] != "cpu")
            without = compile_run(dataclasses.replace(config, **NO_AUGMENTATION), f"{recipe} without augmentation",
                                  target, mesh)
            reports.append(without)
            share = (with_it["step_seconds"] - without["step_seconds"]) / without["step_seconds"]
            rows.append([recipe, ms(with_it["step_seconds"]), ms(without["step_seconds"]), f"{share:.1%}"])
        if rows:
            print(f"\nAugmentation on {tpu} (gather-free): estimated ms per step\n")
            print(report.markdown_table(["recipe", "with", "without", "its share of the step without"], rows))
    if args.json:
        write_json(args.json, reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
