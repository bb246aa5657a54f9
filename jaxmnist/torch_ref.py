"""The PyTorch originals of the seed models, and weight porting between them and jaxmnist's.

Needs the `torch` extra (`pip install -e ".[torch]"`, CPU build). The classes are written as the
write-ups wrote them, layer for layer, so that loading the same weights into both frameworks
shows that the Flax models compute the same function (tests/test_torch_equivalence.py).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from flax import nnx
from torch import nn
from torch.nn import functional as F  # noqa: N812

from jaxmnist import data
from jaxmnist.config import Config


class TorchFC(nn.Module):
    """Write-up 001 V1.0 "ImageClassifier", 24,714 parameters."""

    flattened_CHW = {"fc1": (24, 3, 3)}  # fc1 reads a (C, H, W) flatten; jaxmnist's FC an (H, W, C) one

    def __init__(self, dropout: float = 0.3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 24, 3, padding=1)
        self.fc1 = nn.Linear(24 * 3 * 3, 88)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(88, 10)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x_BCHW)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


class TorchGAP(nn.Module):
    """Write-ups 000/001 V2.0 "EfficientMNIST", 24,048 parameters."""

    def __init__(self, dropout: float = 0.1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv3, self.bn3 = nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(64, 10, bias=False)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x_BCHW))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


TORCH_MODELS: dict[str, type[nn.Module]] = {"fc": TorchFC, "gap": TorchGAP}


def _conv_kernel(weight_OIHW: torch.Tensor) -> np.ndarray:
    return weight_OIHW.detach().numpy().transpose(2, 3, 1, 0)  # -> HWIO


def _linear_kernel(weight: torch.Tensor, flatten_CHW: tuple[int, int, int] | None = None) -> np.ndarray:
    """(out, in) -> (in, out); a Linear after a flatten also reorders its inputs from CHW to HWC."""
    w = weight.detach().numpy()
    if flatten_CHW is not None:
        c, h, wd = flatten_CHW
        w = w.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    return w.T


def load_torch_weights(model: nnx.Module, torch_model: nn.Module) -> None:
    """Copies `torch_model`'s parameters and BatchNorm statistics into the matching nnx `model`."""
    flattened = getattr(torch_model, "flattened_CHW", {})
    for name, child in torch_model.named_children():
        target = getattr(model, name)
        if isinstance(child, nn.Conv2d):
            target.kernel[...] = _conv_kernel(child.weight)
        elif isinstance(child, nn.Linear):
            target.kernel[...] = _linear_kernel(child.weight, flattened.get(name))
        elif isinstance(child, nn.BatchNorm2d):
            target.scale[...] = child.weight.detach().numpy()
            target.mean[...] = child.running_mean.numpy()
            target.var[...] = child.running_var.numpy()
        else:
            continue
        if getattr(child, "bias", None) is not None:
            target.bias[...] = child.bias.detach().numpy()


@dataclasses.dataclass(frozen=True)
class TorchResult:
    test_accuracy: float
    val_accuracy: float | None
    train_seconds: float


def fit_torch(config: Config, dataset: data.Dataset, *, threads: int) -> TorchResult:
    """The recipe in PyTorch, as the write-ups ran it: data in memory as normalised float tensors,
    `torch.optim.Adam(weight_decay=...)`, `clip_grad_norm_`, `CosineAnnealingLR` stepped per batch.

    Same train/validation split and same per-epoch image order as `jaxmnist.train.fit` for the
    same seed; the initial weights come from PyTorch's own generator seeded with `config.seed`.
    """
    from jaxmnist.train import epoch_order, epoch_steps

    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    train, val = data.split_train_val(dataset.train, config.val_size, config.seed)

    def tensors(split: data.Split) -> tuple[torch.Tensor, torch.Tensor]:
        x = (torch.from_numpy(np.array(split.images_NHW)).float() / 255 - config.mean) / config.std
        return x.unsqueeze(1).contiguous(), torch.from_numpy(np.array(split.labels_N)).long()

    x_train, y_train = tensors(train)
    model = TORCH_MODELS[config.arch](dropout=config.dropout)
    steps = epoch_steps(len(train), config.batch_size)
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps * config.epochs, eta_min=config.final_lr)
                if config.schedule == "cosine" else None)

    seconds = 0.0
    for epoch in range(config.epochs):
        order = torch.from_numpy(np.array(epoch_order(config.seed, epoch, len(train))))
        model.train()
        start = time.perf_counter()
        for idx in order.split(config.batch_size):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            if config.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            opt.step()
            if schedule is not None:
                schedule.step()
        seconds += time.perf_counter() - start

    model.eval()

    def accuracy(split: data.Split) -> float:
        x, y = tensors(split)
        with torch.no_grad():
            correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(2000), y.split(2000)))
        return correct / len(split)

    return TorchResult(accuracy(dataset.test), None if val is None else accuracy(val), seconds)
