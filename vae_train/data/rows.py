"""Rows of an array that need not be in memory: a data set larger than RAM is a memory-mapped
file, and a split of it is an index into that file, not a copy.

:class:`Rows` is what a data set returns in place of a tensor when its examples live in a
file (the decode cache of ``dataset=folder``, an ``.npy`` of ``dataset=arrays``). It behaves
like the leading dimension of a tensor where the code needs it: ``len``, ``shape``, ``dtype``,
a slice (another view, nothing read), :meth:`take` (the rows at some indices, read now) and
:meth:`materialize` (everything, read into memory).
"""

from __future__ import annotations

import os

import numpy as np
import torch

_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float32): torch.float32,
                 np.dtype(np.float64): torch.float64, np.dtype(np.int64): torch.int64}


class Rows:
    """Rows ``index`` (all rows: None) of ``base``, a numpy array or memory map of shape
    (N, ...). Reads go through numpy (sorted indices, so a memory map is read in file order)
    and come back as torch tensors."""

    def __init__(self, base: np.ndarray, index: np.ndarray | None = None):
        self.base = base
        self.index = None if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.base) if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple:
        return (len(self), *self.base.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[np.dtype(self.base.dtype)]

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.base.shape[1:])) * self.base.dtype.itemsize

    def dim(self) -> int:
        return self.base.ndim

    def positions(self, idx=None) -> np.ndarray:
        """Row numbers in ``base`` of positions ``idx`` of these rows (None: all)."""
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        if idx is None:
            return np.arange(len(self.base)) if self.index is None else self.index
        # a slice: only its own positions (not an arange of every row, per batch)
        pos = (np.arange(*idx.indices(len(self))) if isinstance(idx, slice)
               else np.asarray(idx, np.int64))
        return pos if self.index is None else self.index[pos]

    def __getitem__(self, idx) -> Rows:
        """A view: a slice or index array of these rows (nothing is read)."""
        if isinstance(idx, slice) and self.index is None and idx.step in (None, 1):
            start, stop, _ = idx.indices(len(self))
            if (start, stop) == (0, len(self)):
                return self
            return Rows(self.base, np.arange(start, max(start, stop)))
        return Rows(self.base, self.positions(idx))

    def take(self, idx=None) -> torch.Tensor:
        """The rows at ``idx`` (positions in these rows; None: all) as a tensor, in that
        order. A memory-mapped file is read with positional reads, in file order, one read
        per run of consecutive rows: its pages go to the page cache, not into this process's
        resident memory, so reading a data set larger than RAM keeps memory flat."""
        pos = self.positions(idx)
        out = np.empty((len(pos), *self.base.shape[1:]), dtype=self.base.dtype)
        if len(pos):
            order = np.argsort(pos, kind="stable")
            if isinstance(self.base, np.memmap) and self.base.filename:
                _pread_rows(self.base, pos[order], out, order)
            else:
                out[order] = self.base[pos[order]]
        return torch.from_numpy(out)

    def materialize(self) -> torch.Tensor:
        """Every row, read into memory."""
        return self.take()


def _pread_rows(mm: np.memmap, rows: np.ndarray, out: np.ndarray, order: np.ndarray) -> None:
    """out[order[i]] = mm[rows[i]] for sorted ``rows``, read with os.preadv."""
    row_bytes = int(np.prod(mm.shape[1:])) * mm.dtype.itemsize
    flat = out.reshape(len(out), -1).view(np.uint8).reshape(len(out), row_bytes)
    # runs of consecutive rows: one read each, into the rows they fill
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [len(rows)]))
    contiguous = bool(np.all(np.diff(order) == 1)) if len(order) > 1 else True
    fd = os.open(mm.filename, os.O_RDONLY)
    try:
        for a, b in zip(starts.tolist(), stops.tolist()):
            offset = mm.offset + int(rows[a]) * row_bytes
            if contiguous:
                buffers = [memoryview(flat[order[a]:order[a] + b - a]).cast("B")]
            else:
                buffers = [memoryview(flat[j]) for j in order[a:b].tolist()]
            want = (b - a) * row_bytes
            got = os.preadv(fd, buffers, offset)
            if got != want:
                raise OSError(f"{mm.filename}: short read ({got} of {want} bytes at "
                              f"{offset}); the file was truncated")
    finally:
        os.close(fd)


def as_tensor(x: torch.Tensor | Rows) -> torch.Tensor:
    """A tensor of the rows (read into memory when they are :class:`Rows`)."""
    return x.materialize() if isinstance(x, Rows) else x
