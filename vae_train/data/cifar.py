"""Readers for CIFAR-10's and CIFAR-100's python pickles (``cifar-10-batches-py``,
``cifar-100-python``), through an unpickler that refuses every object but numpy arrays, and
writers of both layouts for tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from vae_train.errors import UserError

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
CIFAR100_FILES = ["train", "test", "meta"]
CIFAR100_LABELS = {"fine": 100, "coarse": 20}   # dataset.labels -> number of classes


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches hold dicts of bytes, lists and numpy arrays; refuse anything else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path, what: str) -> dict:
    """The dict a CIFAR pickle holds; one line naming the file when it cannot be read."""
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - a damaged or hostile pickle fails in many ways
        detail = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"cannot read {what} file {path}: {type(e).__name__}: {detail}; the "
                        "file is damaged or not a CIFAR pickle, get it again") from None
    if not isinstance(d, dict):
        raise UserError(f"cannot read {what} file {path}: it holds a {type(d).__name__}, "
                        "not a dict")
    return d


def _get(d: dict, key: str):
    """``d[key]`` for a key stored as bytes (python 2 pickles) or str (python 3)."""
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise KeyError(key)


def _array(value, path: Path, what: str, key: str) -> np.ndarray:
    """``value`` (a list or an array in the pickle) as a numpy array; one line when it is
    ragged or not array-like."""
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise UserError(f"{what} file {path}: its {key!r} entry is not a regular array "
                        f"({str(e).split('. ')[0]}); the file is damaged") from None
    return a


def _images_and_labels(path: Path, what: str, d: dict, label_key: str, num_classes: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 32, 32) uint8 and (N,) int64 from a batch dict, checked: data (N, 3072), N
    labels, each in 0..num_classes-1."""
    try:
        raw_data, raw_labels = _get(d, "data"), _get(d, label_key)
    except KeyError as e:
        raise UserError(f"{what} file {path} has no {e.args[0]!r} entry; is it a {what} "
                        "file?") from None
    data = _array(raw_data, path, what, "data")
    labels = _array(raw_labels, path, what, label_key)
    if labels.size == 0:
        labels = labels.astype(np.int64)       # an empty list reads back as float64
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.ndim != 1 \
            or len(labels) != len(data):
        raise UserError(f"{what} file {path} has data of shape {data.shape} and labels of "
                        f"shape {labels.shape}; expected (N, 3072) and N labels")
    if len(data) == 0:
        raise UserError(f"{what} file {path} holds no images (data of shape {data.shape}); "
                        "the file is damaged, get it again")
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer):
            raise UserError(f"{what} file {path} has pixels of type {data.dtype}; expected "
                            "bytes (uint8, 0..255): the file is damaged or not a CIFAR batch")
        lo, hi = int(data.min()), int(data.max())
        if lo < 0 or hi > 255:
            raise UserError(f"{what} file {path} has pixel values from {lo} to {hi} "
                            f"({data.dtype}), outside 0..255: the file is "
                            "damaged or not a CIFAR batch")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{what} file {path} has {label_key} of type {labels.dtype}; expected "
                        "integers: the file is damaged or not a CIFAR batch")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"{what} file {path}: {int(bad.sum())} {label_key} outside 0.."
                        f"{num_classes - 1} (the first: {int(labels[i])} at index {i}); the "
                        "file is corrupt or not of this data set")
    images = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).copy()
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 batch: (N, 3, 32, 32) uint8 images and (N,) labels in 0..9."""
    return _images_and_labels(path, "CIFAR-10", _unpickle(path, "CIFAR-10"), "labels", 10)


def read_cifar10(folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_cifar_batch(folder / name) for name in (TRAIN_BATCHES if train else TEST_BATCHES)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def write_cifar_batch(path: Path, images: np.ndarray, labels) -> None:
    """Write a batch in CIFAR-10's pickle layout; used by tests."""
    data = np.asarray(images, dtype=np.uint8).reshape(len(images), -1)
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": list(map(int, labels))}, f)


def read_cifar100(folder: Path, train: bool, labels: str = "fine"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-100's ``train`` or ``test`` pickle in ``folder``: (N, 3, 32, 32) uint8 images and
    (N,) int64 labels, fine (0..99) or coarse (0..19)."""
    path = folder / ("train" if train else "test")
    return _images_and_labels(path, "CIFAR-100", _unpickle(path, "CIFAR-100"),
                              f"{labels}_labels", CIFAR100_LABELS[labels])


def read_cifar100_names(folder: Path, labels: str = "fine") -> list[str]:
    """The class names in CIFAR-100's ``meta`` pickle (``fine_label_names`` or
    ``coarse_label_names``), checked to be as many as the classes."""
    path = folder / "meta"
    try:
        names = list(_get(_unpickle(path, "CIFAR-100"), f"{labels}_label_names"))
    except KeyError:
        raise UserError(f"CIFAR-100 file {path} has no {labels}_label_names entry; is it "
                        "CIFAR-100's meta file?") from None
    except TypeError:
        raise UserError(f"CIFAR-100 file {path}: {labels}_label_names is not a list") from None
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
    if len(names) != CIFAR100_LABELS[labels]:
        raise UserError(f"CIFAR-100 file {path} names {len(names)} {labels} classes; expected "
                        f"{CIFAR100_LABELS[labels]}")
    return names


def write_cifar100(folder: Path, train: tuple, test: tuple, fine_names=None,
                   coarse_names=None) -> None:
    """Write ``folder``/{train,test,meta} in CIFAR-100's pickle layout (bytes keys, as the
    python 2 originals read back); ``train`` and ``test`` are (images, fine_labels,
    coarse_labels). Used by tests."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, fine, coarse) in (("train", train), ("test", test)):
        data = np.asarray(images, dtype=np.uint8).reshape(len(images), -1)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": list(map(int, fine)),
                         b"coarse_labels": list(map(int, coarse)),
                         b"filenames": [f"{i}.png".encode() for i in range(len(data))]}, f)
    fine_names = fine_names if fine_names is not None else [f"fine{i}" for i in range(100)]
    coarse_names = coarse_names if coarse_names is not None else [f"coarse{i}"
                                                                  for i in range(20)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in fine_names],
                     b"coarse_label_names": [n.encode() for n in coarse_names]}, f)
