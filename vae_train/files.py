"""Files a run writes: atomically (temporary file, flushed, then renamed over the target), so a
crash leaves the old file or the new one, never half of one; and a full disk or a folder that
is not writable is one line naming the path and what was needed, with the temporary file
removed and the old file intact."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
from pathlib import Path

from vae_train.errors import UserError


# Room left free beside a file a run writes (the log, a failure record) before it is refused.
MARGIN = 64 * 1024


class DiskError(UserError):
    """Writing a file failed: no space left, no permission, a read-only file system, ..."""


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"


def disk_error(e: OSError, path: str | Path, need: int | None = None) -> DiskError:
    """The one-line message for an ``OSError`` while writing ``path`` (``need``: bytes)."""
    path = Path(path)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f", {_mb(shutil.disk_usage(_existing(path)).free)} free"
        except OSError:
            free = ""
        needed = f"; {_mb(need)} needed{free}" if need else ""
        return DiskError(f"no space left on device while writing {path}{needed}; free some "
                         "space (or write the run elsewhere with hydra.run.dir=...) and "
                         "run the command again")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the file system is read-only" if e.errno == errno.EROFS else "permission denied"
        return DiskError(f"cannot write {path}: {why}; make the folder writable or choose "
                         "another one")
    return DiskError(f"cannot write {path}: {e.strerror or e}")


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor."""
    for p in [path, *path.parents]:
        if p.exists():
            return p
    return Path(".")


def check_writable(folder: str | Path, what: str = "") -> None:
    """One line when ``folder`` (or, if it does not exist yet, the folder it would be made
    in) cannot be written: a read-only file system, no permission, a file in its place."""
    folder = Path(folder)
    base = _existing(folder)
    label = f"{what} {folder}" if what else str(folder)
    if not base.is_dir():
        raise DiskError(f"cannot write {label}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        ro = False
        try:
            ro = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):
            pass
        why = "the file system is read-only" if ro else "permission denied"
        raise DiskError(f"cannot write {label}: {why} ({base}); make it writable or choose "
                        "another folder")


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(f)`` on a binary temporary file beside ``path``, then rename it into place.
    On any failure (a full disk, Ctrl-C) the temporary file is removed and ``path`` keeps its
    old content; an ``OSError`` becomes a :class:`DiskError` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    written = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            written = f.tell()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, UserError):
            raise disk_error(e, path, written or None) from None
        raise


def _check_room(path: Path, need: int) -> None:
    """Refuse to write ``need`` bytes to ``path`` when its disk does not have them (and
    :data:`MARGIN` beside them); unknown free space is not refused."""
    try:
        free = shutil.disk_usage(_existing(path.parent)).free
    except OSError:
        return
    if free < need + MARGIN:
        raise disk_error(OSError(errno.ENOSPC, "No space left on device"), path, need)


def write_bytes(path: str | Path, data: bytes) -> None:
    """``data`` into ``path`` atomically, refused before anything is written when the disk
    does not have room for it."""
    path = Path(path)
    _check_room(path, len(data))

    def write(f):
        try:
            f.write(data)
        except OSError as e:
            raise disk_error(e, path, len(data)) from None

    atomic_write(path, write)


def serialize(save, obj) -> bytes:
    """``save(obj, buffer)`` into memory (``torch.save``): the size is known before the disk
    is touched."""
    buf = io.BytesIO()
    save(obj, buf)
    return buf.getvalue()


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    _check_room(Path(dst), Path(src).stat().st_size)
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
    write_bytes(path, text.encode())
