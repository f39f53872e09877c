"""Reader for CIFAR-10's python pickles (``cifar-10-batches-py``)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from vae_train.errors import UserError

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches hold dicts of bytes, lists and numpy arrays; refuse anything else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"cannot read CIFAR-10 batch {path}: {e}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise UserError(f"CIFAR-10 batch {path} has data of shape {data.shape} and "
                        f"{len(labels)} labels; expected (N, 3072) and N labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def read_cifar10(folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_cifar_batch(folder / name) for name in (TRAIN_BATCHES if train else TEST_BATCHES)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def write_cifar_batch(path: Path, images: np.ndarray, labels) -> None:
    """Write a batch in CIFAR-10's pickle layout; used by tests."""
    data = np.asarray(images, dtype=np.uint8).reshape(len(images), -1)
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": list(map(int, labels))}, f)
