"""Splits held on the training device as uint8, batched by index.

No per-sample transforms: a batch is an index into a resident tensor, converted to float in
[0, 1] on the device. Binarization: ``static`` samples every image once (fixed seed) at set-up;
``dynamic`` samples each training batch afresh and the validation/test images once (fixed
seed), the usual protocol for dynamically binarized MNIST.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vae_train.data.sources import ImageData
from vae_train.errors import UserError

BINARIZE = ("none", "static", "dynamic")


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, C, H, W) on the device
    y: torch.Tensor  # int64 (N,) on the device

    def __len__(self) -> int:
        return len(self.x)


def _binarize_once(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = x.float().div_(255)
    return (torch.rand(p.shape, generator=g) < p).to(torch.uint8).mul_(255)


class DataModule:
    def __init__(self, data: ImageData, device: torch.device, binarize: str = "none",
                 val_size: float = 0.1, split_seed: int = 0, binarize_seed: int = 0):
        if binarize not in BINARIZE:
            raise UserError(f"dataset.binarize={binarize!r} is not known; use one of "
                            f"{', '.join(BINARIZE)}")
        self.name = data.name
        self.shape = data.shape
        self.classes = data.classes
        self.num_classes = data.num_classes
        self.binarize = binarize
        n = len(data.train_x)
        n_val = int(round(val_size * n)) if val_size < 1 else int(val_size)
        if not 0 < n_val < n:
            raise UserError(f"dataset.val_size={val_size} leaves {n - n_val} of {n} training "
                            "images for training and "
                            f"{n_val} for validation; both must be at least 1")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
        train_x, val_x, test_x = data.train_x[perm[n_val:]], data.train_x[perm[:n_val]], data.test_x
        if binarize == "static":
            train_x = _binarize_once(train_x, binarize_seed)
        if binarize in ("static", "dynamic"):
            val_x = _binarize_once(val_x, binarize_seed + 1)
            test_x = _binarize_once(test_x, binarize_seed + 2)
        self.train = Split(train_x.to(device), data.train_y[perm[n_val:]].to(device))
        self.val = Split(val_x.to(device), data.train_y[perm[:n_val]].to(device))
        self.test = Split(test_x.to(device), data.test_y.to(device))
        self.device = device
        self.binarize_seed = binarize_seed

    def eval_split(self, name: str) -> Split:
        """``train``, ``val`` or ``test`` for evaluation: binary pixels wherever the run was
        binarized (dynamic runs' training images get one fixed binarization)."""
        split = getattr(self, name)
        if name == "train" and self.binarize == "dynamic":
            x = _binarize_once(split.x.cpu(), self.binarize_seed + 3).to(self.device)
            return Split(x, split.y)
        return split

    def train_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.train.x[idx].float().div_(255)
        if self.binarize == "dynamic":
            x = torch.bernoulli(x)
        return x, self.train.y[idx]

    def eval_batches(self, split: Split, batch_size: int):
        """Float batches in order over a whole split (validation or test)."""
        for a in range(0, len(split), batch_size):
            yield split.x[a:a + batch_size].float().div_(255), split.y[a:a + batch_size]
