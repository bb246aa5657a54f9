"""Named presets: each seed model's training as its write-up documents it.

`python -m jaxmnist.train --arch NAME` starts from the recipe of the same name; every field can
then be overridden from the command line.
"""

from jaxmnist.config import Config

RECIPES: dict[str, Config] = {
    # Write-up 001 V1.0: batch 64 over all 60,000 images (938 steps), one epoch. It does not name
    # its optimiser; Adam at PyTorch's default lr 1e-3, no schedule, no weight decay is the usual
    # reading of that notebook style, and what its accuracy (96.86%) is consistent with.
    "fc": Config(arch="fc", batch_size=64, dropout=0.3, optimizer="adam", lr=1e-3),
    # Write-ups 000/001 V2.0: 54k/6k split (844 steps), Adam lr 0.015 with L2 weight decay 1e-4,
    # cosine decay to 0.001 over the epoch (stepped per batch), gradient clipping at norm 1.0.
    "gap": Config(arch="gap", batch_size=64, val_size=6_000, dropout=0.1, optimizer="adam", lr=0.015,
                  schedule="cosine", final_lr=0.001, weight_decay=1e-4, clip_norm=1.0),
}
