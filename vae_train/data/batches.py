"""Splits held on the training device as uint8, batched by index.

No per-sample transforms: a batch is an index into a resident tensor, converted to float in
[0, 1] on the device. Binarization: ``static`` samples every image once (fixed seed) at set-up;
``dynamic`` samples each training batch afresh and the validation/test images once (fixed
seed), the usual protocol for dynamically binarized MNIST.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

import torch

from vae_train.data.base import BINARIZE, ImageData
from vae_train.data.rows import Rows, as_tensor
from vae_train.errors import UserError
from vae_train.memory import available_memory

log = logging.getLogger(__name__)

# A batch read from a file is this many batches ahead of the training step.
PREFETCH_DEPTH = 4


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Stored values -> float: uint8 images to [0, 1], float data (sequences) as they are."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def hash_uniform(rows: torch.Tensor, width: int, seed: int) -> torch.Tensor:
    """(len(rows), width) numbers in [0, 1), a fixed function of (seed, row, column): the same
    row gets the same numbers whichever batch or order it is read in. A 32-bit integer hash
    (lowbias32 by C. Wellons) of each element's position, computed in int64 on the CPU."""
    h = rows.long().view(-1, 1) * width + torch.arange(width).view(1, -1)
    h = (h ^ (int(seed) * 0x9E3779B1)) & 0xFFFFFFFF
    for shift, mul in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        h = ((h ^ (h >> shift)) * mul) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return h.float().mul_(1.0 / 4294967296.0)


@dataclass
class Split:
    """One split. In memory: ``x`` is a tensor on the training device. From a file (a data set
    larger than memory, or ``dataset.in_memory=false``): ``x`` is :class:`Rows` read a batch at
    a time, and ``binarize_seed`` (not None) binarizes every row once, by :func:`hash_uniform`
    of its row number, so it reads the same in every batch and every run."""

    x: torch.Tensor | Rows  # uint8 (N, C, H, W) images, or float (N, 1, T, F) sequences
    y: torch.Tensor         # int64 (N,) on the device
    device: torch.device | None = None     # where rows read from a file go
    binarize_seed: int | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def in_memory(self) -> bool:
        return not isinstance(self.x, Rows)

    def part(self, a: int, b: int | None = None) -> Split:
        """Rows [a, b) (a view; nothing is read)."""
        return Split(self.x[a:b], self.y[a:b], self.device, self.binarize_seed)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The stored rows at positions ``idx`` (on the device), as stored (uint8 or float)."""
        if self.in_memory:   # index_select: a batch of 128 images in 9 us, x[idx] in 130 us
            return (self.x.index_select(0, idx) if isinstance(idx, torch.Tensor)
                    and idx.dim() == 1 else self.x[idx])
        return self.arrive(self.read_rows(idx))

    def read(self, a: int = 0, b: int | None = None) -> torch.Tensor:
        """Stored rows [a, b) on the device."""
        if self.in_memory:
            return self.x[a:b]
        return self.arrive(self.read_rows(slice(a, b)))

    def read_rows(self, idx) -> torch.Tensor:
        """Rows of a file-backed split read into (pinned, for a GPU) CPU memory, binarized
        when the split is (the part a background thread does)."""
        x = self.x.take(idx)
        if self.binarize_seed is not None:
            pos = torch.from_numpy(self.x.positions(idx))
            u = hash_uniform(pos, x[0].numel(), self.binarize_seed).view(x.shape)
            x = (u < x.float().div_(255)).to(torch.uint8).mul_(255)
        if self.device is not None and self.device.type == "cuda":
            x = x.pin_memory()
        return x

    def arrive(self, x: torch.Tensor) -> torch.Tensor:
        """Rows read on the CPU, moved to the device."""
        return x if self.device is None else x.to(self.device, non_blocking=True)

    def floats(self, n: int | None = None) -> torch.Tensor:
        """The first ``n`` examples (all: None) as float."""
        return to_float(self.read(0, n))


class Prefetch:
    """Iterate ``fn(item)`` for ``items`` with the calls made ``depth`` ahead by a background
    thread (reads from a file overlap the training step). ``close()`` (or leaving a ``with``
    block) stops the thread; an error in it is raised where its result would have been."""

    _END = object()

    def __init__(self, fn, items, depth: int = 4):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(fn, iter(items)), daemon=True,
                                       name="vae-train-prefetch")
        self.thread.start()

    def _work(self, fn, items) -> None:
        try:
            for item in items:
                if self.stop.is_set():
                    return
                self._put((True, fn(item)))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put((False, e))
            return
        self._put((True, self._END))

    def _put(self, entry) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        while True:
            ok, value = self.queue.get()
            if not ok:
                raise value
            if value is self._END:
                return
            yield value

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _binarize_once(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = x.float().div_(255)
    return (torch.rand(p.shape, generator=g) < p).to(torch.uint8).mul_(255)


class DataModule:
    """The three splits (train, validation carved from the training set, test) and their
    batches. In memory (the default for data that fit): uint8/float tensors on the training
    device, a batch an index into them. From a file (``in_memory=false``, or ``auto`` when the
    data are larger than ``memory_share`` of the available memory): the splits stay
    :class:`Rows` of the memory-mapped file and a background thread reads the coming batches
    (each rank only its share), so resident memory stays far below the data's size."""

    def __init__(self, data: ImageData, device: torch.device, binarize: str = "none",
                 val_size: float = 0.1, split_seed: int = 0, binarize_seed: int = 0,
                 in_memory: bool | str = "auto", memory_share: float = 0.5):
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
        self.values = data.value_kind        # 8bit, unit, real or binary (see ImageData)
        self.stats = data.stats              # the data set's standardisation, saved with a run
        self.binarize = binarize
        self.device = device
        self.binarize_seed = binarize_seed
        # torch.channels_last for conv models on GPUs (device.channels_last), set by train.py
        self.memory_format = torch.contiguous_format
        n = len(data.train_x)
        n_val = int(round(val_size * n)) if val_size < 1 else int(val_size)
        if not 0 < n_val < n:
            raise UserError(f"dataset.val_size={val_size} leaves {n - n_val} of {n} training "
                            "images for training and "
                            f"{n_val} for validation; both must be at least 1")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
        ty, vy = data.train_y[perm[n_val:]].to(device), data.train_y[perm[:n_val]].to(device)
        ey = data.test_y.to(device)
        self.in_memory = self._fits(data, in_memory, memory_share)
        if not self.in_memory:
            train_x, test_x = _rows(data.train_x), _rows(data.test_x)
            seeds = {"static": (binarize_seed, binarize_seed + 1, binarize_seed + 2),
                     "dynamic": (None, binarize_seed + 1, binarize_seed + 2)}.get(
                         binarize, (None, None, None))
            self.train = Split(train_x[perm[n_val:]], ty, device, seeds[0])
            self.val = Split(train_x[perm[:n_val]], vy, device, seeds[1])
            self.test = Split(test_x, ey, device, seeds[2])
            return
        train_all = as_tensor(data.train_x)
        train_x, val_x = train_all[perm[n_val:]], train_all[perm[:n_val]]
        del train_all
        test_x = as_tensor(data.test_x)
        if binarize == "static":
            train_x = _binarize_once(train_x, binarize_seed)
        if binarize in ("static", "dynamic"):
            val_x = _binarize_once(val_x, binarize_seed + 1)
            test_x = _binarize_once(test_x, binarize_seed + 2)
        self.train = Split(train_x.to(device), ty)
        self.val = Split(val_x.to(device), vy)
        self.test = Split(test_x.to(device), ey)

    @staticmethod
    def _fits(data: ImageData, in_memory: bool | str, share: float) -> bool:
        """Whether to hold the data in memory: data already in memory are; data in a file are
        unless ``in_memory`` is false, or ``auto`` and larger than ``share`` of the memory
        available now."""
        files = [x for x in (data.train_x, data.test_x) if isinstance(x, Rows)]
        if not files:
            if in_memory is False:
                log.info("dataset.in_memory=false: %s is generated or parsed into memory "
                         "already; it stays there", data.name)
            return True
        if in_memory in (True, False):
            return bool(in_memory)
        size = sum(x.nbytes for x in files)
        free = available_memory()
        if free is None or size <= share * free:
            return True
        log.info("%s: %.0f MB of data > %.0f%% of the %.0f MB of memory available; batches are "
                 "read from the file (dataset.in_memory=true to load it anyway)", data.name,
                 size / 2**20, 100 * share, free / 2**20)
        return False

    def eval_split(self, name: str) -> Split:
        """``train``, ``val`` or ``test`` for evaluation: binary pixels wherever the run was
        binarized (dynamic runs' training images get one fixed binarization)."""
        split = {"train": self.train, "val": self.val, "test": self.test}[name]
        if name == "train" and self.binarize == "dynamic":
            if not split.in_memory:
                return Split(split.x, split.y, split.device, self.binarize_seed + 3)
            x = _binarize_once(split.x.cpu(), self.binarize_seed + 3).to(self.device)
            return Split(x, split.y)
        return split

    def labeled_subset(self, n: int, seed: int = 0) -> Split:
        """``n`` training examples balanced over the classes (n / classes each, the remainder
        to the first classes), chosen with ``seed``: the labels a semi-supervised run sees."""
        k = self.num_classes
        if self.train.y.dim() != 1:
            raise UserError(f"{self.name} has attribute labels (multi-hot), not classes; a "
                            "semi-supervised model needs one class per example")
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
        idx = torch.cat(picked).to(self.train.y.device)
        return Split(self.train.take(idx), self.train.y[idx])

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_format is torch.contiguous_format or x.dim() != 4:
            return x
        return x.contiguous(memory_format=self.memory_format)

    def train_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(self.train.take(idx)), self.train.y.index_select(0, idx)

    def train_batches(self, indices: list[torch.Tensor]):
        """``(x, y)`` training batches for a list of index tensors, in order. From a file, a
        background thread reads ``PREFETCH_DEPTH`` batches ahead; close the iterator (or
        leave a ``with contextlib.closing(...)``) to stop it early."""
        if self.train.in_memory:
            for idx in indices:
                yield self.train_batch(idx)
            return
        with Prefetch(self.train.read_rows, indices, PREFETCH_DEPTH) as rows:
            for idx, x in zip(indices, rows):
                yield self.batch(self.train.arrive(x)), self.train.y[idx]

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """Stored training examples as a training batch: floats, binarized afresh when the
        run is dynamically binarized, in the model's memory layout."""
        x = to_float(x)
        if self.binarize == "dynamic":
            x = torch.bernoulli(x)
        return self._layout(x)

    def eval_batches(self, split: Split, batch_size: int):
        """Float batches in order over a whole split (validation or test); read ahead by a
        background thread when the split is in a file."""
        starts = range(0, len(split), batch_size)
        if split.in_memory:
            for a in starts:
                yield self._layout(to_float(split.x[a:a + batch_size])), split.y[a:a + batch_size]
            return
        with Prefetch(lambda a: split.read_rows(slice(a, a + batch_size)), starts,
                      PREFETCH_DEPTH) as rows:
            for a, x in zip(starts, rows):
                yield self._layout(to_float(split.arrive(x))), split.y[a:a + batch_size]


def _rows(x: torch.Tensor | Rows) -> Rows:
    return x if isinstance(x, Rows) else Rows(x.numpy())
