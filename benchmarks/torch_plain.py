"""The gap or fc recipe as a plain PyTorch script, written as a PyTorch user would: the baseline of endtoend.py.

    python benchmarks/torch_plain.py --arch gap --data-dir ../shared/data/mnist

Self-contained on purpose (torch and numpy only, nothing of jaxmnist): reads the four IDX .gz files
with numpy, trains one epoch, evaluates on test (and validation for gap), and prints one JSON line
with the accuracies and where the time went, from process start: imports, data, init, compile
(0: eager; with --compile, torch.compile's first step, which compiles the model's forward and
backward passes: the smaller last batch and evaluation compile again inside train and eval),
train, eval, total. gap: 54k/6k random split, batch 64, Adam lr 0.015 with weight decay
1e-4, cosine to 0.001 stepped per batch, gradient norm clipped at 1.0, dropout 0.1. fc: all 60,000
images, batch 64, Adam lr 1e-3, dropout 0.3.
"""

import time

FIRST_LINE = time.perf_counter()

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def process_age() -> float:
    """Seconds since the process started (/proc, 10 ms resolution), or since this script's first line."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
            return float(uptime.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - FIRST_LINE


IMPORTS_SECONDS = process_age()
START = time.perf_counter() - IMPORTS_SECONDS  # process start on the perf_counter clock

RECIPES = {
    "gap": dict(lr=0.015, weight_decay=1e-4, val_size=6_000, final_lr=0.001, clip_norm=1.0),
    "fc": dict(lr=1e-3, weight_decay=0.0, val_size=0, final_lr=None, clip_norm=None),
}


def read_idx(path: str, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_mnist(data_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images normalised as (N, 1, 28, 28) float32, labels as int64."""
    images = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"), 16).reshape(-1, 1, 28, 28)
    labels = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"), 8)
    x = (torch.from_numpy(images.astype(np.float32) / 255.0) - 0.1307) / 0.3081
    return x, torch.from_numpy(labels.astype(np.int64))


def make_model(arch: str) -> nn.Module:
    if arch == "gap":
        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        return nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Dropout(0.1), nn.Linear(64, 10, bias=False))

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*block(1, 8), *block(8, 16), *block(16, 24), nn.Flatten(),
                         nn.Linear(216, 88), nn.ReLU(), nn.Dropout(0.3), nn.Linear(88, 10))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=tuple(RECIPES), default="gap")
    parser.add_argument("--data-dir", required=True, help="folder with the four MNIST IDX .gz files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--train-size", type=int, default=None, help="train on only N images: a smoke test")
    parser.add_argument("--compile", action="store_true",
                        help="run the model under torch.compile (inductor), as a PyTorch 2 user would")
    parser.add_argument("--json", default=None, help="also write the result to PATH")
    args = parser.parse_args(argv)
    recipe, phases, clock = RECIPES[args.arch], {"imports": IMPORTS_SECONDS}, time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train_x, train_y = load_mnist(args.data_dir, "train")
    test_x, test_y = load_mnist(args.data_dir, "t10k")
    order = torch.randperm(len(train_x))
    val_idx, train_idx = order[:recipe["val_size"]], order[recipe["val_size"]:][:args.train_size]
    val_x, val_y, train_x, train_y = train_x[val_idx], train_y[val_idx], train_x[train_idx], train_y[train_idx]
    phases["data"], clock = time.perf_counter() - clock, time.perf_counter()

    model = make_model(args.arch)
    run = torch.compile(model) if args.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps = len(range(0, len(train_x), 64))
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=recipe["final_lr"])
                 if recipe["final_lr"] is not None else None)
    phases["init"], phases["compile"], clock = time.perf_counter() - clock, 0.0, time.perf_counter()

    model.train()
    perm = torch.randperm(len(train_x))
    for i in range(0, len(train_x), 64):
        idx = perm[i:i + 64]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(run(train_x[idx]), train_y[idx])
        loss.backward()
        if recipe["clip_norm"] is not None:
            nn.utils.clip_grad_norm_(model.parameters(), recipe["clip_norm"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if i == 0 and args.compile:  # torch.compile compiles on the first call: that step is its compile phase
            phases["compile"], clock = time.perf_counter() - clock, time.perf_counter()
    phases["train"], clock = time.perf_counter() - clock, time.perf_counter()

    test_accuracy = accuracy(run, test_x, test_y)
    val_accuracy = accuracy(run, val_x, val_y) if len(val_x) else None
    phases["eval"] = time.perf_counter() - clock
    phases["total"] = time.perf_counter() - START

    result = {"framework": "pytorch compiled" if args.compile else "pytorch", "arch": args.arch,
              "test_accuracy": test_accuracy, "val_accuracy": val_accuracy,
              "train_images": len(train_x), "threads": args.threads, "phases": phases, "wall_seconds": phases["total"]}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
