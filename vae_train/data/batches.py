"""Splits held on the training device as uint8, batched by index.

No per-sample transforms: a batch is an index into a resident tensor, converted to float in
[0, 1] on the device. Binarization: ``static`` samples every image once (fixed seed) at set-up;
``dynamic`` samples each training batch afresh and the validation/test images once (fixed
seed), the usual protocol for dynamically binarized MNIST.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vae_train.data.base import BINARIZE, ImageData
from vae_train.errors import UserError


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Stored values -> float: uint8 images to [0, 1], float data (sequences) as they are."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, C, H, W) images, or float (N, 1, T, F) sequences, on the device
    y: torch.Tensor  # int64 (N,) on the device

    def __len__(self) -> int:
        return len(self.x)

    def floats(self, n: int | None = None) -> torch.Tensor:
        """The first ``n`` examples (all: None) as float."""
        return to_float(self.x[:n])


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
        if binarize != "none" and data.train_x.dtype != torch.uint8:
            raise UserError(f"dataset.binarize={binarize}: {data.name} holds real-valued "
                            "sequences, not images; use dataset.binarize=none")
        self.name = data.name
        self.shape = data.shape
        self.classes = data.classes
        self.num_classes = data.num_classes
        self.factor_grid = data.factor_grid  # known factors of variation (dsprites), or None
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
        # torch.channels_last for conv models on GPUs (device.channels_last), set by train.py
        self.memory_format = torch.contiguous_format

    def eval_split(self, name: str) -> Split:
        """``train``, ``val`` or ``test`` for evaluation: binary pixels wherever the run was
        binarized (dynamic runs' training images get one fixed binarization)."""
        split = {"train": self.train, "val": self.val, "test": self.test}[name]
        if name == "train" and self.binarize == "dynamic":
            x = _binarize_once(split.x.cpu(), self.binarize_seed + 3).to(self.device)
            return Split(x, split.y)
        return split

    def labeled_subset(self, n: int, seed: int = 0) -> Split:
        """``n`` training examples balanced over the classes (n / classes each, the remainder
        to the first classes), chosen with ``seed``: the labels a semi-supervised run sees."""
        k = self.num_classes
        if k < 2:
            raise UserError(f"{self.name} has no class labels; a semi-supervised model needs them")
        if not (isinstance(n, int) and k <= n <= len(self.train)):
            raise UserError(f"dataset.labeled={n} is invalid: it must be an integer between the "
                            f"number of classes ({k}) and the training set size ({len(self.train)})")
        g = torch.Generator().manual_seed(seed)
        y = self.train.y.cpu()
        picked = []
        for c in range(k):
            want = n // k + (1 if c < n % k else 0)
            members = torch.nonzero(y == c).flatten()
            if len(members) < want:
                raise UserError(f"dataset.labeled={n}: class {c} has only {len(members)} "
                                f"training examples, {want} are needed; use fewer labels")
            picked.append(members[torch.randperm(len(members), generator=g)[:want]])
        idx = torch.cat(picked).to(self.train.x.device)
        return Split(self.train.x[idx], self.train.y[idx])

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_format is torch.contiguous_format or x.dim() != 4:
            return x
        return x.contiguous(memory_format=self.memory_format)

    def train_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(self.train.x[idx]), self.train.y[idx]

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """Stored training examples as a training batch: floats, binarized afresh when the
        run is dynamically binarized, in the model's memory layout."""
        x = to_float(x)
        if self.binarize == "dynamic":
            x = torch.bernoulli(x)
        return self._layout(x)

    def eval_batches(self, split: Split, batch_size: int):
        """Float batches in order over a whole split (validation or test)."""
        for a in range(0, len(split), batch_size):
            yield self._layout(to_float(split.x[a:a + batch_size])), split.y[a:a + batch_size]
