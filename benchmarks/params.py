"""Every registered model's parameter count, against its write-up's, with a per-layer breakdown.

    python benchmarks/params.py [--json params.json]

Counts what PyTorch's `sum(p.numel() for p in model.parameters())` counts (weights, biases,
BatchNorm scale and offset; not running statistics), from shapes alone (`nnx.eval_shape`).
Exits 1 if any count differs from the documented one or reaches the 25,000 budget.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import jax
from flax import nnx

from jaxmnist.models import DOCUMENTED_PARAMS, MODELS, PARAM_BUDGET


def layer_table(arch: str) -> list[tuple[str, str, int]]:
    """(layer, shapes of its parameters, count) in definition order."""
    order: list[str] = []

    def params():
        model = MODELS[arch](rngs=nnx.Rngs(0))
        order.extend(vars(model))  # attributes in the order __init__ defined them
        return nnx.state(model, nnx.Param)

    layers: dict[str, list] = {}
    for path, value in nnx.to_flat_state(jax.eval_shape(params)):  # shapes only, nothing allocated
        layers.setdefault(".".join(map(str, path[:-1])), []).append((path[-1], value.shape))
    return [(name, ", ".join(f"{leaf} {'x'.join(map(str, shape))}" for leaf, shape in leaves),
             sum(math.prod(shape) for _, shape in leaves))
            for name, leaves in sorted(layers.items(), key=lambda item: order.index(item[0].split(".")[0]))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="also write the counts and breakdowns here")
    args = parser.parse_args(argv)
    summary, problems = {}, []
    print("| arch | params | documented | under 25,000 |\n|---|---:|---:|---|")
    tables = {arch: layer_table(arch) for arch in MODELS}
    for arch, table in tables.items():
        total = sum(count for _, _, count in table)
        documented = DOCUMENTED_PARAMS.get(arch)
        if total != documented:
            problems.append(f"{arch}: {total:,} parameters, its write-up documents {documented}")
        if total >= PARAM_BUDGET:
            problems.append(f"{arch}: {total:,} parameters reaches the {PARAM_BUDGET:,} budget")
        documented_text = f"{documented:,}" if documented else "undocumented"
        print(f"| {arch} | {total:,} | {documented_text} | {'yes' if total < PARAM_BUDGET else 'NO'} |")
        summary[arch] = {"params": total, "documented": documented,
                         "layers": [{"layer": n, "shapes": s, "params": c} for n, s, c in table]}
    for arch, table in tables.items():
        print(f"\n### {arch}\n\n| layer | parameters | count |\n|---|---|---:|")
        print("\n".join(f"| {name} | {shapes} | {count:,} |" for name, shapes, count in table))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    for problem in problems:
        print(f"params: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
