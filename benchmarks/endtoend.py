"""Whole processes, start to finish: `python -m jaxmnist.train` against a plain PyTorch script of the same recipe.

    python benchmarks/endtoend.py --arch gap fc --pairs 3 --data-dir ../shared/data/mnist

The time a user waits for the command, imports, compilation and evaluation included. Each run is a
subprocess timed from outside (`time.perf_counter` around `subprocess.run`); its JSON summary is read
back for the phases inside it. jaxmnist runs two ways: "cold", with an empty persistent compilation
cache (a fresh folder in `JAXMNIST_CACHE_DIR`), and "warm", with a folder that one untimed run of
the same arch has filled (`--cache-dir`, default a temporary folder). Each of the `--pairs` rounds,
with seed = the round's number for both sides, is a cold pair and a warm pair, each one jaxmnist run
and one PyTorch run (benchmarks/torch_plain.py) back to back, PyTorch first in odd rounds:
even rounds run cold, PyTorch, warm, PyTorch; odd rounds PyTorch, cold, PyTorch, warm. Prints per
arch a table of the phases (medians over runs; "other" is the outside wall time less the phases the
process reports) and the jaxmnist/PyTorch whole-process ratio within each pair as median (min–max),
and writes every run to `--json`. Needs the torch extra.
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
SIDES = {"cold": "jaxmnist, cold cache", "warm": "jaxmnist, warm cache", "torch": "PyTorch script"}


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
    return {"jax": [sys.executable, "-m", "jaxmnist.train", *common, "--no-progress"],
            "torch": [sys.executable, str(TORCH_SCRIPT), *common]}


def cache_env(folder: str | Path) -> dict[str, str]:
    return {**os.environ, "JAXMNIST_CACHE_DIR": str(folder)}


def run_pair(arch: str, args: argparse.Namespace, seed: int, warm_dir: Path) -> list[dict]:
    """One round: a cold pair and a warm pair, each jaxmnist then PyTorch (PyTorch first in odd rounds)."""
    cmd, runs = commands(arch, args, seed), []
    for mode in ("cold", "warm"):
        for side in (("jax", "torch") if seed % 2 == 0 else ("torch", "jax")):
            if side == "torch":
                run = timed_run(cmd["torch"])
            elif mode == "warm":
                run = timed_run(cmd["jax"], cache_env(warm_dir))
            else:
                with tempfile.TemporaryDirectory(prefix="jaxmnist-cold-cache-") as empty:
                    run = timed_run(cmd["jax"], cache_env(empty))
            name = "torch" if side == "torch" else mode
            runs.append({"arch": arch, "pair": seed, "mode": mode, "side": name, **run})
            print(f"{arch} pair {seed} ({mode}): {SIDES[name]} {run['outside_seconds']:.2f} s, "
                  f"test {run['test_accuracy']:.2%}", file=sys.stderr)
    return runs


def phase_rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    for side, label in SIDES.items():
        mine = [r for r in runs if r["side"] == side]

        def median(values: list[float | None]) -> str:
            return "n/a" if any(v is None for v in values) else f"{statistics.median(values):.2f}"

        rows.append([label, str(len(mine)), *(median([r["phases"][k] for r in mine]) for k in PHASES),
                     median([r["other"] for r in mine]), f"**{median([r['outside_seconds'] for r in mine])}**",
                     f"{statistics.median(r['test_accuracy'] for r in mine):.2%}"])
    return rows


def ratios(runs: list[dict], mode: str) -> list[float]:
    """jaxmnist's outside wall time over PyTorch's, within each `mode` pair."""
    pairs: dict[int, dict[str, float]] = {}
    for r in runs:
        if r["mode"] == mode:
            pairs.setdefault(r["pair"], {})[r["side"]] = r["outside_seconds"]
    return [p[mode] / p["torch"] for p in pairs.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=("gap", "fc"), default=["gap", "fc"])
    parser.add_argument("--pairs", type=int, default=3, help="rounds, each a cold and a warm jaxmnist/PyTorch pair")
    parser.add_argument("--data-dir", default=os.environ.get("JAXMNIST_DATA_DIR"),
                        help="folder with the four MNIST IDX .gz files (default: $JAXMNIST_DATA_DIR)")
    parser.add_argument("--cache-dir", default=None,
                        help="the warm runs' compilation cache folder, filled first by one untimed run per arch "
                             "(default: a temporary folder)")
    parser.add_argument("--train-size", type=int, default=None, help="train on only N images: a smoke test")
    parser.add_argument("--json", default="endtoend.json", help="where to write every run")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("--data-dir (or $JAXMNIST_DATA_DIR) is needed: the PyTorch script reads the IDX files itself")
    args.data_dir = str(Path(args.data_dir).resolve())  # the runs start in the repository root

    print(report.benchmark_header("whole process: jaxmnist vs a plain PyTorch script",
                                  f"; {os.cpu_count()} cores, PyTorch with as many threads; load average "
                                  f"{os.getloadavg()[0]:.1f} at the start (PyTorch's threads slow down many times "
                                  "over on a busy machine: measure on an idle one)"))
    runs, summary_rows = [], []
    with tempfile.TemporaryDirectory(prefix="jaxmnist-warm-cache-") as tmp:
        warm_dir = Path(args.cache_dir or tmp)
        for arch in args.arch:
            timed_run(commands(arch, args, 0)["jax"], cache_env(warm_dir))  # untimed: fills the warm cache
            mine = [r for seed in range(args.pairs) for r in run_pair(arch, args, seed, warm_dir)]
            runs += mine
            print(f"\n## {arch}: seconds, median over runs\n")
            print(report.markdown_table(["run", "runs", *PHASES, "other", "total (outside)", "test acc"],
                                        phase_rows(mine)))
            summary_rows.append([arch, str(args.pairs), f"**{spread(ratios(mine, 'warm'), '.2f')}**",
                                 spread(ratios(mine, "cold"), ".2f")])
    print("\n## jaxmnist / PyTorch, whole process, per pair: median (min–max)\n")
    print(report.markdown_table(["arch", "pairs", "warm cache", "cold cache"], summary_rows))
    Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
