"""Reader for SVHN's cropped digits (``train_32x32.mat``, ``test_32x32.mat``,
``extra_32x32.mat``): MATLAB v5 files holding ``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1) with
labels 1..10, 10 meaning the digit 0. Reading them needs scipy (``pip install
'vae-train[svhn]'``); a writer of the same layout is here for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vae_train.errors import UserError, first_line

SVHN_CLASSES = tuple(str(d) for d in range(10))
SCIPY_HINT = "dataset=svhn needs scipy: pip install 'vae-train[svhn]'"


def require_scipy():
    """``scipy.io``; one line saying how to install it when it is missing."""
    try:
        import scipy.io
    except ImportError:
        raise UserError(SCIPY_HINT) from None
    return scipy.io


def svhn_file(folder: Path, split: str) -> Path:
    """Where torchvision keeps a split: ``<folder>/<split>_32x32.mat``."""
    return folder / f"{split}_32x32.mat"


def read_svhn(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One SVHN file as (N, 3, 32, 32) uint8 images and (N,) int64 digits 0..9."""
    sio = require_scipy()
    try:
        mat = sio.loadmat(str(path), variable_names=["X", "y"])
    except Exception as e:  # noqa: BLE001 - scipy raises several kinds; each is one line
        raise UserError(f"cannot read SVHN file {path} ({first_line(e)}); it must be a "
                        "MATLAB v5 file as published (re-download it)") from None
    if "X" not in mat or "y" not in mat:
        raise UserError(f"SVHN file {path} lacks the variable "
                        f"{'X' if 'X' not in mat else 'y'}; is it a *_32x32.mat file?")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise UserError(f"SVHN file {path}: X is {x.dtype} of shape {x.shape}; expected uint8 "
                        "of shape (32, 32, 3, N)")
    n = x.shape[3]
    if y.size != n or (y.ndim == 2 and 1 not in y.shape) or y.ndim > 2:
        raise UserError(f"SVHN file {path}: y has shape {y.shape} for {n} images; expected "
                        f"({n}, 1)")
    y = y.reshape(-1)
    if not (np.issubdtype(y.dtype, np.integer) or np.all(np.mod(y, 1) == 0)):
        raise UserError(f"SVHN file {path}: y holds non-integer labels; expected 1..10")
    y = y.astype(np.int64)
    bad = (y < 0) | (y > 10)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"SVHN file {path}: {int(bad.sum())} labels outside 1..10 (the first: "
                        f"{int(y[i])} at index {i}); the file is corrupt or not SVHN")
    y[y == 10] = 0
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))     # (N, C, H, W)
    return torch.from_numpy(images), torch.from_numpy(y)


def write_svhn(path: Path, images: np.ndarray, labels) -> None:
    """Write ``images`` (N, 3, 32, 32) uint8 and ``labels`` (digits 0..9, written as SVHN
    does: 0 as 10) as an SVHN .mat file; used by tests."""
    sio = require_scipy()
    x = np.asarray(images, dtype=np.uint8).transpose(2, 3, 1, 0)   # (32, 32, 3, N)
    y = np.asarray(labels, dtype=np.uint8).reshape(-1, 1).copy()
    y[y == 0] = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(str(path), {"X": np.ascontiguousarray(x), "y": y})
