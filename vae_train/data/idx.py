"""Reader for the IDX format of MNIST-like data sets (LeCun et al.), plain or gzipped.

The header is two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
then one big-endian int32 per dimension. Anything that does not fit is refused with the
file's path and what is wrong with it.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from vae_train.memory import available_memory
from vae_train.errors import UserError


def read_idx(path: str | Path, expect_dims: int | None = None) -> torch.Tensor:
    """The array an IDX file holds, as uint8. The header is checked before any data is read:
    a plain file must hold exactly the bytes its dimensions need (compared with its size on
    disk); a gzipped one is read as a stream, into an array of the size the header claims,
    refused when that is more than the memory available (a corrupt header claiming 10^9 x
    10^9 images is one line, not an allocation), and must then end where the data end."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            return _read(f, path, expect_dims)
    except UserError:
        raise
    except (OSError, EOFError, zlib.error) as e:     # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read IDX file {path}: {type(e).__name__}: {e}") from None


def _read_all(f, n: int) -> bytes:
    """Up to ``n`` bytes from ``f`` (fewer only at its end)."""
    parts, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _read(f, path: Path, expect_dims: int | None) -> torch.Tensor:
    head = _read_all(f, 4)
    if len(head) < 4:
        raise UserError(f"IDX file {path} is truncated: {len(head)} bytes, no header")
    if head[0] != 0 or head[1] != 0 or head[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (magic number "
                        f"{head.hex()}, expected 000008xx)")
    ndim = head[3]
    if expect_dims is not None and ndim != expect_dims:
        raise UserError(f"IDX file {path} has {ndim} dimensions, expected {expect_dims}")
    raw_dims = _read_all(f, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise UserError(f"IDX file {path} is truncated inside its header")
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(ndim)]
    count = math.prod(dims)                           # exact: Python integers do not wrap
    shape = "x".join(map(str, dims)) or "a scalar"
    if isinstance(f, gzip.GzipFile):
        free = available_memory()
        if free is not None and count > free:
            raise UserError(f"IDX file {path}: its header claims {shape} = {count:,} bytes, "
                            f"more than the {free / 2**30:.1f} GB of memory available; the file "
                            "is corrupt (get it again), or too large for this machine")
    else:
        size = os.fstat(f.fileno()).st_size
        if size - header != count:
            raise UserError(f"IDX file {path} holds {size - header:,} data bytes but its "
                            f"header {shape} needs {count:,}: the file is truncated or corrupt")
    try:
        arr = np.empty(count, dtype=np.uint8)
    except (MemoryError, ValueError):                 # more than this machine can address
        raise UserError(f"IDX file {path}: its header claims {shape} = {count:,} bytes, more "
                        "than this machine can hold; the file is corrupt (get it again)"
                        ) from None
    view, got = memoryview(arr), 0
    while got < count:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    if got != count or f.read(1):
        held = f"{got:,}" if got != count else f"more than {count:,}"
        raise UserError(f"IDX file {path} holds {held} data bytes but its header {shape} "
                        f"needs {count:,}: the file is truncated or corrupt")
    return torch.from_numpy(arr.reshape(dims))


def write_idx(path: str | Path, array) -> None:
    """Write an unsigned-byte IDX file (gzipped if the name ends in .gz); used by tests."""
    arr = np.ascontiguousarray(np.asarray(array, dtype=np.uint8))
    data = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data += arr.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
