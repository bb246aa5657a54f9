"""Whole processes, start to finish: `python -m jaxmnist.train` against a plain PyTorch script of the same recipe.

    python benchmarks/endtoend.py --arch gap fc --pairs 3 --data-dir ../shared/data/mnist

The time a user waits for the command, imports, compilation and evaluation included. Each run is a
subprocess timed from outside (`time.perf_counter` around `subprocess.run`); its JSON summary is read
back for the phases inside it. jaxmnist runs two ways: "cold", with an empty persistent compilation
cache (a fresh folder in `JAXMNIST_CACHE_DIR`), and "warm", with a folder that one untimed run of
the same arch has filled (`--cache-dir`, default a temporary folder). The PyTorch script
(benchmarks/torch_plain.py) runs eager, and with `--compile` (torch.compile, inductor) with an
empty and with a filled `TORCHINDUCTOR_CACHE_DIR` in the same way (`--no-compiled` leaves those
out). Each of the `--pairs` rounds, with seed = the round's number for every side, runs every side
once, back to back, each side first in turn. Prints per arch a table of the phases (medians over
runs; "other" is the outside wall time less the phases the process reports) and the
jaxmnist/PyTorch whole-process ratios within each round as median (min–max): against eager
PyTorch, and against compiled PyTorch with its cache in the same state. Writes every run to
`--json`. Needs the torch extra.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jaxmnist import report

ROOT = Path(__file__).resolve().parents[1]
TORCH_SCRIPT = ROOT / "benchmarks" / "torch_plain.py"
PHASES = ("imports", "data", "init", "compile", "train", "eval")
# The ratios printed: jaxmnist against eager PyTorch, then against compiled PyTorch, each cache alike.
RATIOS = (("warm", "torch"), ("cold", "torch"), ("warm", "compiled-warm"), ("cold", "compiled-cold"))
SIDES = {"cold": "jaxmnist, cold cache", "warm": "jaxmnist, warm cache", "torch": "PyTorch script, eager",
         "compiled-cold": "PyTorch script, torch.compile, cold cache",
         "compiled-warm": "PyTorch script, torch.compile, warm cache"}


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})" if values else "n/a"


def timed_run(command: list[str], env: dict[str, str] | None = None) -> dict:
    """Runs `command --json TMP` from the repository root; its summary and the wall time seen from outside."""
    with tempfile.TemporaryDirectory(prefix="endtoend-") as tmp:
        out = Path(tmp) / "summary.json"
        start = time.perf_counter()
        done = subprocess.run([*command, "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"endtoend: {' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        summary = json.loads(out.read_text())
    phases = summary.get("phases") or {}
    known = [phases.get(k) for k in PHASES]
    other = seconds - sum(known) if all(v is not None for v in known) else None
    return {"outside_seconds": seconds, "wall_seconds": summary.get("wall_seconds"),
            "phases": {k: phases.get(k) for k in PHASES}, "other": other,
            "test_accuracy": summary.get("test_accuracy"), "val_accuracy": summary.get("val_accuracy")}


def commands(arch: str, args: argparse.Namespace, seed: int) -> dict[str, list[str]]:
    common = ["--arch", arch, "--data-dir", args.data_dir, "--seed", str(seed)]
    if args.train_size:
        common += ["--train-size", str(args.train_size)]
    torch = [sys.executable, str(TORCH_SCRIPT), *common]
    return {"jax": [sys.executable, "-m", "jaxmnist.train", *common, "--no-progress"], "torch": torch,
            "compiled": [*torch, "--compile"]}


def cache_env(side: str, folder: str | Path) -> dict[str, str]:
    """The environment of a run whose compilation cache is `folder`: JAX's, or inductor's for compiled PyTorch."""
    return {**os.environ, "TORCHINDUCTOR_CACHE_DIR" if side == "compiled" else "JAXMNIST_CACHE_DIR": str(folder)}


def run_round(arch: str, args: argparse.Namespace, seed: int, warm_dirs: dict[str, Path],
              sides: list[str]) -> list[dict]:
    """One round: every side once, each in turn first (`sides` rotated by the round's number)."""
    cmd, runs = commands(arch, args, seed), []
    for name in sides[seed % len(sides):] + sides[: seed % len(sides)]:
        program = "jax" if name in ("cold", "warm") else "compiled" if name.startswith("compiled") else "torch"
        if program == "torch":
            run = timed_run(cmd["torch"])
        elif name.endswith("warm"):
            run = timed_run(cmd[program], cache_env(program, warm_dirs[program]))
        else:
            with tempfile.TemporaryDirectory(prefix="endtoend-cold-cache-") as empty:
                run = timed_run(cmd[program], cache_env(program, empty))
        runs.append({"arch": arch, "pair": seed, "side": name, **run})
        print(f"{arch} round {seed}: {SIDES[name]} {run['outside_seconds']:.2f} s, test {run['test_accuracy']:.2%}",
              file=sys.stderr)
    return runs


def phase_rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    for side, label in SIDES.items():
        mine = [r for r in runs if r["side"] == side]
        if not mine:
            continue

        def median(values: list[float | None]) -> str:
            return "n/a" if any(v is None for v in values) else f"{statistics.median(values):.2f}"

        rows.append([label, str(len(mine)), *(median([r["phases"][k] for r in mine]) for k in PHASES),
                     median([r["other"] for r in mine]), f"**{median([r['outside_seconds'] for r in mine])}**",
                     f"{statistics.median(r['test_accuracy'] for r in mine):.2%}"])
    return rows


def ratios(runs: list[dict], side: str, over: str) -> list[float]:
    """`side`'s outside wall time over `over`'s, within each round."""
    rounds: dict[int, dict[str, float]] = {}
    for r in runs:
        rounds.setdefault(r["pair"], {})[r["side"]] = r["outside_seconds"]
    return [t[side] / t[over] for t in rounds.values() if side in t and over in t]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=("gap", "fc"), default=["gap", "fc"])
    parser.add_argument("--pairs", type=int, default=3, help="rounds, each of one run of every side")
    parser.add_argument("--data-dir", default=os.environ.get("JAXMNIST_DATA_DIR"),
                        help="folder with the four MNIST IDX .gz files (default: $JAXMNIST_DATA_DIR)")
    parser.add_argument("--cache-dir", default=None,
                        help="the warm runs' compilation cache folder, filled first by one untimed run per arch "
                             "(default: a temporary folder)")
    parser.add_argument("--train-size", type=int, default=None, help="train on only N images: a smoke test")
    parser.add_argument("--json", default="endtoend.json", help="where to write every run")
    parser.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the PyTorch script under torch.compile, cold and warm inductor cache "
                             "(default on)")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("--data-dir (or $JAXMNIST_DATA_DIR) is needed: the PyTorch script reads the IDX files itself")
    args.data_dir = str(Path(args.data_dir).resolve())  # the runs start in the repository root

    print(report.benchmark_header("whole process: jaxmnist vs a plain PyTorch script",
                                  f"; {os.cpu_count()} cores, PyTorch with as many threads; load average "
                                  f"{os.getloadavg()[0]:.1f} at the start (PyTorch's threads slow down many times "
                                  "over on a busy machine: measure on an idle one)"))
    sides = list(SIDES) if args.compiled else ["cold", "warm", "torch"]
    shown = [(a, b) for a, b in RATIOS if b in sides]
    runs, summary_rows = [], []
    with tempfile.TemporaryDirectory(prefix="endtoend-warm-caches-") as tmp:
        warm_dirs = {"jax": Path(args.cache_dir or Path(tmp) / "jax"), "compiled": Path(tmp) / "inductor"}
        for arch in args.arch:
            cmd = commands(arch, args, 0)
            for program in ("jax", "compiled") if args.compiled else ("jax",):  # untimed: fill the warm caches
                timed_run(cmd[program], cache_env(program, warm_dirs[program]))
            mine = [r for seed in range(args.pairs) for r in run_round(arch, args, seed, warm_dirs, sides)]
            runs += mine
            print(f"\n## {arch}: seconds, median over runs\n")
            print(report.markdown_table(["run", "runs", *PHASES, "other", "total (outside)", "test acc"],
                                        phase_rows(mine)))
            summary_rows.append([arch, str(args.pairs), *(spread(ratios(mine, a, b), ".2f") for a, b in shown)])
    print("\n## jaxmnist / PyTorch, whole process, within each round: median (min–max)\n")
    short = {"cold": "cold", "warm": "warm", "torch": "eager", "compiled-cold": "compiled cold",
             "compiled-warm": "compiled warm"}
    print(report.markdown_table(["arch", "rounds", *(f"jaxmnist {short[a]} / PyTorch {short[b]}" for a, b in shown)],
                                summary_rows))
    Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
