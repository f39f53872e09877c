"""Reader for the IDX format of MNIST-like data sets (LeCun et al.), plain or gzipped.

The header is two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
then one big-endian int32 per dimension. Anything that does not fit is refused with the
file's path and what is wrong with it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from vae_train.errors import UserError


def read_idx(path: str | Path, expect_dims: int | None = None) -> torch.Tensor:
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4:
        raise UserError(f"IDX file {path} is truncated: {len(raw)} bytes, no header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (magic number "
                        f"{raw[:4].hex()}, expected 000008xx)")
    ndim = raw[3]
    if expect_dims is not None and ndim != expect_dims:
        raise UserError(f"IDX file {path} has {ndim} dimensions, expected {expect_dims}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"IDX file {path} is truncated inside its header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - header != count:
        raise UserError(f"IDX file {path} holds {len(raw) - header} data bytes but its header "
                        f"{'x'.join(map(str, dims))} needs {count}: the file is truncated or corrupt")
    arr = np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(dims)
    return torch.from_numpy(arr.copy())


def write_idx(path: str | Path, array) -> None:
    """Write an unsigned-byte IDX file (gzipped if the name ends in .gz); used by tests."""
    arr = np.ascontiguousarray(np.asarray(array, dtype=np.uint8))
    data = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data += arr.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
