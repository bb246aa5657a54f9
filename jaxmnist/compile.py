"""`python -m jaxmnist.compile`: compile a run's programs for a TPU or a GPU, on any machine, and
print what XLA expects of them, before anyone rents the hardware.

    python -m jaxmnist.compile --target tpu-v5e-1 --recipe gap
    python -m jaxmnist.compile --target tpu-v5e-8 --recipe gap-b512 --json b512.json
    python -m jaxmnist.compile --target gpu-t4 --arch res8k --batch-size 128

Every training flag is accepted, so a run is costed as it would train. The programs are those
`python -m jaxmnist.train` runs on that platform (`jaxmnist.programs`, in the forms
`jaxmnist.platforms` chooses), lowered from abstract arrays for the target's devices
(`jaxmnist.targets`) and compiled by its own compiler: libtpu (`jax[tpu]`) or the CUDA plugin
(`jax[cuda12]`), neither of which needs the device. Nothing is trained and no data is read.

Every time printed is an estimate, not a measurement: for a TPU, XLA's TPU cost model
(`optimal_seconds`); for a GPU, whose compiler gives none, a roofline from the published float32
peak and memory bandwidth; on CPU, none (train there to measure). The training chunk is a loop
whose body XLA costs once: its numbers are per step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Sequence

import jax
from jax._src.lib import _jax  # the one way to cost an HLO module for a GPU target

from jaxmnist import cli, data, platforms, programs, report, targets
from jaxmnist.checkpoint import write_json
from jaxmnist.config import Config
from jaxmnist.errors import ConfigError

ESTIMATES = {"tpu": "XLA's TPU cost model", "gpu": "roofline from the published float32 peak and bandwidth"}


@dataclasses.dataclass(frozen=True)
class Cost:
    """One compiled program: what a call costs, per `unit` (a training step, or an evaluation block)."""

    name: str
    unit: str
    calls: int  # units per epoch
    flops: float | None
    bytes: float | None
    seconds: float | None  # estimated, per unit
    memory_bytes: int  # arguments + outputs + temporaries, less what the outputs reuse of donated arguments
    compile_seconds: float


def cost(name: str, unit: str, calls: int, lowered: jax.stages.Lowered, target: targets.Target) -> Cost:
    """Compiles `lowered` and reads XLA's analyses of it."""
    print(f"jaxmnist: compiling the {name} for {target.name}...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_seconds = time.perf_counter() - start
    print(f" {compile_seconds:.1f} s", file=sys.stderr, flush=True)
    analysis = compiled.cost_analysis() or _unoptimised_cost(lowered)
    flops, bytes_ = analysis.get("flops"), analysis.get("bytes accessed")
    seconds = None
    if target.platform == "tpu":
        seconds = analysis.get("optimal_seconds")
        seconds = seconds if seconds is not None and seconds > 0 else None  # a loop inside defeats the model
    elif target.platform == "gpu" and flops is not None and bytes_ is not None:
        seconds = max(flops / target.peak_flops, bytes_ / target.peak_bandwidth)
    memory = compiled.memory_analysis()
    memory_bytes = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
                    - memory.alias_size_in_bytes)
    return Cost(name, unit, calls, flops, bytes_, seconds, memory_bytes, compile_seconds)


def _unoptimised_cost(lowered: jax.stages.Lowered) -> dict:
    """XLA's flops and bytes of the lowered program before optimisation, costed by the CPU client.

    The GPU compiler reports no cost analysis (UNIMPLEMENTED), and a plugin's `Lowered` has none
    either. Unfused, every operation reads and writes memory: the bytes overcount what a GPU moves.
    """
    module = lowered.compiler_ir("hlo").as_hlo_module()
    return _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)


def compile_run(config: Config, recipe: str, target: targets.Target, mesh: jax.sharding.Mesh,
                forms: str | None = None) -> dict:
    """Compiles `config` (named `recipe` in the report)'s training chunk, last-batch step and
    evaluation for `mesh` (on `target`) and returns everything `main` prints, as one JSON-ready
    dict. `forms`: the platform whose program forms to compile (by default the mesh's: what
    training there runs)."""
    pool, test = data.SIZES[config.dataset]
    train_idx, val_idx = programs.train_val_indices(config, pool, config.seed)
    n_train, b = len(train_idx), config.batch_size
    steps = programs.epoch_steps(n_train, b)
    platform = forms or platforms.of(mesh)
    graphdef, eval_graphdef, state, params = programs.init_run(config, steps, platform)
    lowered = programs.training_programs(config, graphdef, state, mesh, pool=pool, train=n_train, forms=platform)
    sizes = [test, len(val_idx)] if len(val_idx) else [test]
    batch, block = programs.eval_blocks(sizes, mesh.size)
    costs = [cost("training chunk", f"step of {b}", n_train // b, lowered["chunk"], target)]
    if "tail" in lowered:
        costs.append(cost("last batch", f"step of {n_train % b}", 1, lowered["tail"], target))
    evaluation = programs.evaluation_program(config, eval_graphdef, state, mesh, batch=batch, block=block,
                                             forms=platform)
    costs.append(cost("evaluation", f"block of {block:,}", sum(-(-n // block) for n in sizes), evaluation, target))
    chunk = costs[0]
    train_costs = [c for c in costs if c.name != "evaluation"]
    known = all(c.seconds is not None for c in costs)
    return {
        "target": target.name,
        "device": target.description,
        "devices": mesh.size,
        "recipe": recipe,
        "arch": config.arch,
        "params": params,
        "steps_per_epoch": steps,
        "forms": platform,
        "estimate": ESTIMATES.get(target.platform),
        "step_seconds": chunk.seconds,
        "epoch_seconds": sum(c.seconds * c.calls for c in train_costs) if known else None,
        "eval_seconds": costs[-1].seconds * costs[-1].calls if known else None,
        "flops_per_step": chunk.flops,
        "bytes_per_step": chunk.bytes,
        "memory_bytes": chunk.memory_bytes,
        "device_memory_bytes": target.memory_bytes or _host_memory(),
        "compile_seconds": sum(c.compile_seconds for c in costs),
        "programs": [dataclasses.asdict(c) for c in costs],
        "versions": report.versions(*targets.COMPILERS),
        "config": dataclasses.asdict(config),
    }


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def format_report(r: dict) -> str:
    label = r["estimate"] or "none on CPU: train to measure"
    rows = [[p["name"], p["unit"], f"{p['calls']:,}", _number(p["flops"], 1e9, ".3f"), _number(p["bytes"], 1e6, ",.1f"),
             _number(p["seconds"], 1e-3, ".3f"), f"{p['memory_bytes'] / 2**20:,.1f}", f"{p['compile_seconds']:.1f}"]
            for p in r["programs"]]
    table = report.markdown_table(["program", "per", "per epoch", "GFLOP", "MB accessed", "estimated ms",
                                   "memory MiB", "compile s"], rows)
    if r["epoch_seconds"] is None:
        epoch = "no estimate" + ("" if r["estimate"] is None else " (the cost model gave none for a program)")
    else:
        epoch = (f"{r['epoch_seconds']:.3g} s training ({r['steps_per_epoch']:,} steps) + "
                 f"{r['eval_seconds']:.3g} s evaluation")
    memory = max(p["memory_bytes"] for p in r["programs"])
    return "\n".join([
        f"{r['arch']} ({r['params']:,} parameters) compiled for {r['target']}: {r['device']}, {r['devices']} "
        f"device{'s' if r['devices'] > 1 else ''}",
        f"times: estimates, not measurements ({label})", "", table, "",
        f"estimated epoch    {epoch}",
        f"memory             {memory / 2**20:,.1f} MiB per device, of {r['device_memory_bytes'] / 2**30:,.1f} GiB "
        f"({memory / r['device_memory_bytes']:.2%})",
        f"compilation        {r['compile_seconds']:.1f} s here",
        "versions           " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
    ])


def _number(value: float | None, unit: float, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value / unit, spec)


def build_parser():
    parser = cli.config_parser(
        "python -m jaxmnist.compile",
        "Compile a run's programs for a TPU or GPU (or this CPU) without one, and print XLA's estimates: FLOPs, "
        "bytes and seconds per step and per epoch, the memory needed against the device's, compile seconds and "
        "versions. --arch or --recipe picks the run; every training flag overrides one field of it.")
    parser.add_argument("--target", required=True, choices=tuple(targets.TARGETS),
                        help="what to compile for: " + "; ".join(f"{t.name}: {t.description}"
                                                                 for t in targets.TARGETS.values()))
    parser.add_argument("--json", metavar="PATH", help="also write the report as one JSON object to PATH")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args, config = cli.parse(argv, build_parser())
    cli.check_output("--json", args.json, "Nothing was compiled.")
    config.validate()
    config.validate_sizes(data.SIZES[config.dataset][0])
    target = targets.TARGETS[args.target]
    if target.platform != "cpu":
        # The target's devices are not this machine's: JAX runs here on CPU, and lowers for them.
        jax.config.update("jax_platforms", "cpu")
    if config.devices is not None and target.devices is not None and config.devices > target.devices:
        raise ConfigError(f"Invalid configuration: --devices {config.devices} but {target.name} has "
                          f"{target.devices}: leave --devices out to use them all, or choose a larger target.")
    result = compile_run(config, args.recipe or args.arch or "gap", target, targets.mesh(target, config.devices))
    print(format_report(result))
    if args.json:
        write_json(args.json, result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jaxmnist.compile`. Exit status: 0 done; 2 bad input or a missing compiler."""
    return cli.run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
