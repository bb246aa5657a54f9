"""The PyTorch originals of the seed models, weight porting between them and jaxmnist's, and the
recipes trained in PyTorch.

Needs the `torch` extra (`pip install -e ".[torch]"`, CPU build). The classes are written as the
write-ups wrote them, layer for layer, with the attribute names of jaxmnist's models, so that
loading the same weights into both frameworks shows that the Flax models compute the same function
(tests/test_torch_equivalence.py). `fit_torch` trains a recipe in PyTorch on the same split, in
the same image order and with the same augmentation family as `jaxmnist.fit`
(benchmarks/compare.py).
"""

from __future__ import annotations

import dataclasses
import time

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn
from torch.nn import functional as F  # noqa: N812

from jaxmnist import data
from jaxmnist.config import Config
from jaxmnist.programs import augmentation, epoch_order, epoch_steps, train_val_indices


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


class TorchConv6(nn.Module):
    """Write-up 003's final model ("Iter1" of 002), 24,498 parameters."""

    flattened_CHW = {"fc": (28, 7, 7)}  # fc reads a (C, H, W) flatten; jaxmnist's Conv6 an (H, W, C) one

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.conv3 = nn.Conv2d(16, 28, 3)
        self.transition = nn.Conv2d(28, 8, 1)
        self.conv4 = nn.Conv2d(8, 16, 3)
        self.conv5 = nn.Conv2d(16, 28, 3)
        self.fc = nn.Linear(28 * 7 * 7, 10)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x_BCHW))))
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        x = F.relu(self.conv5(F.relu(self.conv4(F.relu(self.transition(x))))))
        return self.fc(x.flatten(1))


class TorchUnder20k(nn.Module):
    """Write-up 002 "Iter6", "EfficientMnist-Under20K", 13,562 parameters."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 28, 3), nn.BatchNorm2d(28)
        self.conv4, self.bn4 = nn.Conv2d(28, 8, 1), nn.BatchNorm2d(8)
        self.conv5, self.bn5 = nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16)
        self.conv6, self.bn6 = nn.Conv2d(16, 16, 3), nn.BatchNorm2d(16)
        self.conv7 = nn.Conv2d(16, 28, 3)
        self.fc = nn.Linear(28, 10)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x_BCHW)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.max_pool2d(F.relu(self.bn4(self.conv4(x))), 2)
        x = F.relu(self.bn5(self.conv5(x)))
        x = F.relu(self.bn6(self.conv6(x)))
        x = F.relu(self.conv7(x))
        return self.fc(x.mean(dim=(2, 3)))


class TorchRes8k(nn.Module):
    """Write-up 004's residual model, 8,530 parameters; ReLU after the residual sum, as jaxmnist's Res8k."""

    def __init__(self, dropout: float = 0.03):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.conv_res = nn.Conv2d(24, 24, 1)
        self.conv3, self.bn3 = nn.Conv2d(24, 16, 1), nn.BatchNorm2d(16)
        self.conv4, self.bn4 = nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.conv5 = nn.Conv2d(24, 10, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = self.dropout(F.relu(self.bn1(self.conv1(x_BCHW))))
        x = F.max_pool2d(self.dropout(F.relu(self.bn2(self.conv2(x)))), 2)
        residual = self.conv_res(x)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.max_pool2d(self.dropout(F.relu(self.bn4(self.conv4(x)) + residual)), 2)
        return self.conv5(x).mean(dim=(2, 3))


TORCH_MODELS: dict[str, type[nn.Module]] = {"fc": TorchFC, "gap": TorchGAP, "conv6": TorchConv6,
                                            "under20k": TorchUnder20k, "res8k": TorchRes8k}


def build_torch(arch: str, dropout: float | None = None) -> nn.Module:
    """PyTorch model `arch` with its own dropout rate, or `dropout` where given (as `jaxmnist.models.build`)."""
    return TORCH_MODELS[arch](**({} if dropout is None else {"dropout": dropout}))


def _conv_kernel(weight_OIHW: torch.Tensor) -> np.ndarray:
    return weight_OIHW.detach().numpy().transpose(2, 3, 1, 0)  # -> HWIO


def _linear_kernel(weight: torch.Tensor, flatten_CHW: tuple[int, int, int] | None = None) -> np.ndarray:
    """(out, in) -> (in, out); a Linear after a flatten also reorders its inputs from CHW to HWC."""
    w = weight.detach().numpy()
    if flatten_CHW is not None:
        c, h, wd = flatten_CHW
        w = w.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    return w.T


def _put(variable: nnx.Variable, value: np.ndarray) -> None:
    """Replaces `variable`'s value (concrete or abstract) with `value` of the same shape."""
    if tuple(variable.shape) != value.shape:
        raise ValueError(f"shape mismatch: the nnx variable is {tuple(variable.shape)}, PyTorch's is {value.shape}")
    # A copy: JAX on CPU may alias a NumPy buffer, and `value` views the PyTorch tensor's memory,
    # which an optimiser step would then change under the nnx model.
    variable.set_value(jnp.asarray(np.array(value, variable.dtype)))


def load_torch_weights(model: nnx.Module, torch_model: nn.Module) -> None:
    """Copies `torch_model`'s parameters and BatchNorm statistics into the matching nnx `model`.

    `model` may be abstract (`nnx.eval_shape`): every parameter and BatchNorm statistic is replaced,
    so a model that was never initialised comes out whole but for its dropout keys.
    """
    flattened = getattr(torch_model, "flattened_CHW", {})
    for name, child in torch_model.named_children():
        target = getattr(model, name)
        if isinstance(child, nn.Conv2d):
            _put(target.kernel, _conv_kernel(child.weight))
        elif isinstance(child, nn.Linear):
            _put(target.kernel, _linear_kernel(child.weight, flattened.get(name)))
        elif isinstance(child, nn.BatchNorm2d):
            _put(target.scale, child.weight.detach().numpy())
            _put(target.mean, child.running_mean.numpy())
            _put(target.var, child.running_var.numpy())
        else:
            continue
        if getattr(child, "bias", None) is not None:
            _put(target.bias, child.bias.detach().numpy())


def warp(images_BCHW: torch.Tensor, inverse_B22: torch.Tensor, translation_B2: torch.Tensor) -> torch.Tensor:
    """`jaxmnist.augment.warp` in PyTorch: per image y = c + A (x - c) + t, given A^-1 and t in
    (row, col) pixels, bilinear, zero outside.

    `F.affine_grid` works in (x, y) = (col, row) coordinates normalised to [-1, 1] with
    `align_corners=False`, where pixel j sits at (2j + 1) / W - 1 = (j - (W - 1) / 2) * 2 / W: the
    image centre is 0, so the map keeps its linear part (rows and columns swapped, rescaled per axis)
    and the shift becomes t * 2 / size. `grid_sample`'s zero padding drops each out-of-image corner of the
    bilinear stencil, as `map_coordinates(mode="constant")` does.
    """
    b, _, h, w = images_BCHW.shape
    swap = [1, 0]
    to_unit_2 = torch.tensor([2 / w, 2 / h], dtype=inverse_B22.dtype)  # pixels -> normalised, (x, y)
    inverse_xy = inverse_B22[:, swap][:, :, swap] * to_unit_2[:, None] / to_unit_2[None, :]
    shift_xy = translation_B2[:, swap] * to_unit_2
    theta_B23 = torch.cat([inverse_xy, -(inverse_xy @ shift_xy.unsqueeze(-1))], dim=-1)
    grid = F.affine_grid(theta_B23.to(images_BCHW.dtype), [b, 1, h, w], align_corners=False)
    return F.grid_sample(images_BCHW, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotation_inverse(degrees_B: torch.Tensor) -> torch.Tensor:
    """`jaxmnist.augment.rotation_inverse`: A^-1 of a counter-clockwise rotation, (row, col) axes."""
    theta = torch.deg2rad(degrees_B)
    cos, sin = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)


def augment(config: Config, generator: torch.Generator, pixels_BCHW: torch.Tensor) -> torch.Tensor:
    """The batch with each image transformed by its own draw of `jaxmnist.augment.Augmentation`'s family.

    Rotation within +-`rotate` degrees, zoom in [1 - scale, 1 + scale], with chance `crop_p` a
    further zoom by 28 / crop_size (centre crop, resize back), a shift within +-`translate` of the
    image size rounded to whole pixels: one affine map per image, drawn from `generator`, resampled
    once. The write-ups ran torchvision's per-image PIL transforms in a DataLoader; this is the same
    transform family done in memory on the whole batch (`F.affine_grid` + `F.grid_sample`), the fast
    and fair PyTorch counterpart of what jaxmnist does on the device.
    """
    b, _, h, w = pixels_BCHW.shape

    def uniform(shape: tuple[int, ...], bound: float | torch.Tensor) -> torch.Tensor:
        return (torch.rand(shape, generator=generator) * 2 - 1) * bound

    degrees_B = uniform((b,), config.rotate)
    zoom_B = 1 + uniform((b,), config.scale)
    cropped_B = torch.rand((b,), generator=generator) < config.crop_p
    zoom_B = zoom_B * torch.where(cropped_B, h / config.crop_size, 1.0)
    shift_B2 = torch.round(uniform((b, 2), config.translate * torch.tensor([h, w], dtype=torch.float32)))
    return warp(pixels_BCHW, rotation_inverse(degrees_B) / zoom_B[:, None, None], shift_B2)


def make_torch_optimizer(config: Config, model: nn.Module, steps_per_epoch: int):
    """`jaxmnist.optim.make_optimizer` in PyTorch: the optimiser and its scheduler, stepped per batch
    (cosine, onecycle) or per epoch (step), as (optimizer, per_batch, per_epoch); unused ones are None."""
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler
    per_batch = per_epoch = None
    if config.schedule == "cosine":
        per_batch = scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=config.final_lr)
    elif config.schedule == "onecycle":  # PyTorch's defaults, momentum (or Adam's beta1) cycled 0.95-0.85
        per_batch = scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps)
    elif config.schedule == "step":
        per_epoch = scheduler.StepLR(opt, step_size=config.decay_epochs, gamma=config.decay_factor)
    return opt, per_batch, per_epoch


@dataclasses.dataclass(frozen=True)
class TorchResult:
    test_accuracy: float
    val_accuracy: float | None
    train_seconds: float
    train_images: int = 0
    epochs: int = 1
    compile_seconds: float = 0.0  # torch.compile's warm-up (0: eager)

    @property
    def images_per_second(self) -> float:
        return self.train_images * self.epochs / self.train_seconds


EVAL_BATCH = 2000  # fit_torch's evaluation batch


def fit_torch(config: Config, dataset: data.Dataset, *, threads: int, compiled: bool = False) -> TorchResult:
    """The recipe in PyTorch, as the write-ups ran it: data in memory as float tensors, `torch.optim`
    Adam or SGD with `weight_decay`, `clip_grad_norm_`, the recipe's scheduler (`make_torch_optimizer`).

    `compiled`: the model runs through `torch.compile` (inductor), as a PyTorch 2 user would run it;
    the optimiser and the augmentation stay eager. Its compilation is done up front and timed apart
    (`compile_seconds`, see `_warm_up`), as jaxmnist's is, so that the epochs measure steady state.

    Same train/validation split (and `train_size` subset) and same per-epoch image order as
    `jaxmnist.fit` for the same seed; the initial weights and dropout masks come from
    PyTorch's own generator seeded with `config.seed`. Recipes without augmentation train on tensors
    normalised once up front; the others keep [0, 1] pixels, and each batch is augmented (`augment`,
    its own generator seeded from `config.seed`) and then normalised, inside the timed loop as in
    jaxmnist.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    train_idx, val_idx = train_val_indices(config, len(dataset.train), config.seed)
    train, val = dataset.train.take(train_idx), dataset.train.take(val_idx) if len(val_idx) else None
    augmented = augmentation(config).active
    # A generator of its own, seeded apart from the global one that draws weights and dropout masks.
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([config.seed, 3]).generate_state(1)[0]))

    def unit(split: data.Split) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.array(split.images_NHW)).float().div_(255).unsqueeze(1).contiguous()
        return x, torch.from_numpy(np.array(split.labels_N)).long()

    def normalised(split: data.Split) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = unit(split)
        return (x - config.mean) / config.std, y

    x_train, y_train = (unit if augmented else normalised)(train)
    model = build_torch(config.arch, config.dropout)
    steps = epoch_steps(len(train), config.batch_size)
    opt, per_batch, per_epoch = make_torch_optimizer(config, model, steps)
    run, compile_seconds = model, 0.0
    if compiled:
        start = time.perf_counter()
        # A graph per batch shape (three or four): one generic over the batch size ran slower.
        run = torch.compile(model, dynamic=False)
        eval_sizes = {min(EVAL_BATCH, len(split)) for split in (dataset.test, val) if split is not None}
        _warm_up(run, model, {config.batch_size, len(train) % config.batch_size or config.batch_size}, eval_sizes)
        compile_seconds = time.perf_counter() - start

    seconds = 0.0
    for epoch in range(config.epochs):
        order = torch.from_numpy(np.array(epoch_order(config.seed, epoch, len(train))))
        model.train()
        start = time.perf_counter()
        for idx in order.split(config.batch_size):
            x = x_train[idx]
            if augmented:
                x = (augment(config, generator, x) - config.mean) / config.std
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(run(x), y_train[idx]).backward()
            if config.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            opt.step()
            if per_batch is not None:
                per_batch.step()
        if per_epoch is not None:
            per_epoch.step()
        seconds += time.perf_counter() - start

    model.eval()

    def accuracy(split: data.Split) -> float:
        x, y = normalised(split)
        with torch.no_grad():
            correct = sum(int((run(xb).argmax(1) == yb).sum())
                          for xb, yb in zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH)))
        return correct / len(split)

    return TorchResult(accuracy(dataset.test), None if val is None else accuracy(val), seconds, len(train),
                       config.epochs, compile_seconds)


def _warm_up(run: nn.Module, model: nn.Module, train_sizes: set[int], eval_sizes: set[int]) -> None:
    """Compiles `run` (`torch.compile(model)`) for every batch shape and mode the run will meet, then
    puts back `model`'s weights, BatchNorm statistics and the random state, so that training starts
    exactly where it would have: the forward and backward passes on zeros leave gradients, which
    the first step's `zero_grad` discards, and statistics, restored here."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.train()
    for b in sorted(train_sizes):
        F.cross_entropy(run(torch.zeros(b, 1, 28, 28)), torch.zeros(b, dtype=torch.long)).backward()
    model.eval()
    with torch.no_grad():
        for b in sorted(eval_sizes):
            run(torch.zeros(b, 1, 28, 28))
        for k, v in model.state_dict().items():
            v.copy_(saved[k])
    model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
