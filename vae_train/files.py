"""Files a run writes: atomically (temporary file, flushed, then renamed over the target), so a
crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(f)`` on a binary temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    with open(src, "rb") as f:
        atomic_write(dst, lambda out: shutil.copyfileobj(f, out))


def _finite_or_none(obj):
    """Strict JSON: NaN and infinities (an untrained run's best_val_loss, ...) become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: dict) -> None:
    text = json.dumps(_finite_or_none(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
