"""Arrays parsed from source files (the IDX files of MNIST, Fashion-MNIST, KMNIST), kept in one
``.npz`` under the cache folder and read back by the next run: Fashion-MNIST's four gzipped
IDX files take about 0.4 s to inflate and parse, their cached arrays about 0.03 s to read.

**The entry** is ``<cache dir>/arrays/<name>-<group>-<key>.npz``, the cache folder being the
decode cache's (:func:`vae_train.data.decode_cache.cache_root`: ``dataset.cache_dir``, else
``$VAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/vae-train``, else ``~/.cache/vae-train``).
``group`` hashes the sources' resolved paths; ``key`` hashes :data:`FORMAT`, the reader's own
version and every source's resolved path, size and mtime_ns. A source that changes (is
replaced, rewritten, touched) gives another key: the entry is parsed again and written, and
the older entries of its group are deleted. The full key is stored in the file and compared
on reading.

**Never trusted.** An entry that does not load (truncated, a byte changed: the ``.npz``'s
members carry CRC-32s, checked on reading), holds another key or lacks an array is logged as
a warning and rebuilt.

**Never in the way.** A cache folder that cannot be written (read-only, full, not a folder)
costs the speed-up only: one warning says why, and the arrays parsed from the sources are used
as they are. An entry is written under a temporary name unique to the process, then renamed, so
runs that start together (a sweep) never read a half-written file. An entry records its
sources' paths: when a new entry of the same name is written, the entries whose sources no
longer exist (a copy in a temporary folder, since deleted) are deleted too, so the folder does
not grow with every temporary copy read once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vae_train.data.decode_cache import cache_root

log = logging.getLogger(__name__)

FORMAT = 1          # bump when the layout of an entry changes
KEY = "__key__"     # the member holding the entry's full key
SOURCES = "__sources__"   # the member holding the sources' resolved paths, one a line


def source_stats(sources: list[Path]) -> list[tuple[str, int, int]]:
    """(resolved path, size, mtime_ns) of each source file."""
    out = []
    for p in sources:
        real = Path(p).resolve()
        st = real.stat()
        out.append((str(real), st.st_size, st.st_mtime_ns))
    return out


def _label(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "arrays"


def entry_path(name: str, sources: list[Path], version: int = 0,
               cache_dir: str | None = None) -> tuple[Path, str]:
    """(the ``.npz`` of the entry for these sources as they are now, its full key)."""
    stats = source_stats(sources)
    key = hashlib.sha256(json.dumps({"format": FORMAT, "version": version, "name": name,
                                     "sources": stats}).encode()).hexdigest()
    group = hashlib.sha256("\n".join(s[0] for s in stats).encode()).hexdigest()[:10]
    return cache_root(cache_dir) / "arrays" / f"{_label(name)}-{group}-{key[:20]}.npz", key


def _read(path: Path, key: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays of an entry; ValueError saying why it is not usable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = str(z[KEY]) if KEY in z.files else None
            if stored != key:
                raise ValueError("it belongs to other source files")
            arrays = {k: z[k] for k in z.files if k not in (KEY, SOURCES)}
    except ValueError:
        raise
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"it does not load ({type(e).__name__}: {e})") from None
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ValueError(f"it lacks the array {missing[0]}")
    return arrays


def _sources_gone(entry: Path) -> bool:
    """Whether a source file an entry was parsed from no longer exists (False when the entry
    does not say: it is kept)."""
    try:
        with np.load(entry, allow_pickle=False) as z:
            if SOURCES not in z.files:
                return False
            paths = str(z[SOURCES]).splitlines()
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return False
    return any(not os.path.exists(p) for p in paths)


def _write(path: Path, key: str, arrays: dict[str, np.ndarray], sources: list[str]) -> None:
    """Write the entry atomically (a temporary file of this process, then a rename); then
    delete the other entries of its group, and the entries of its name whose sources are
    gone. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, **{KEY: np.array(key), SOURCES: np.array("\n".join(sources))})
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    group = path.stem.rsplit("-", 1)[0]
    label = group.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{label}-*.npz"):
        if old != path and (old.stem.startswith(f"{group}-") or _sources_gone(old)):
            try:
                old.unlink()
                log.debug("array cache: removed %s", old)
            except OSError:
                pass


def cached_arrays(name: str, sources: list[Path], parse: Callable[[], dict[str, np.ndarray]],
                  *, names: tuple[str, ...] = (), cache: bool = True,
                  cache_dir: str | None = None, version: int = 0) -> dict[str, np.ndarray]:
    """``parse()`` (name -> array, parsed from ``sources``), from the cache when an intact
    entry for the sources as they are now (holding every array of ``names``) is there; else
    parsed, and written to the cache (``cache``: false, neither read nor written).
    ``version``: the parser's own version (bump it when parsing changes). Errors of ``parse``
    pass through."""
    if not cache:
        return parse()
    try:
        path, key = entry_path(name, sources, version, cache_dir)
    except OSError:             # a source vanished: the parser says so in its own words
        return parse()
    if path.exists():
        try:
            arrays = _read(path, key, names)
        except ValueError as why:
            log.warning("array cache %s is not usable: %s; parsing the sources again", path, why)
        else:
            log.debug("array cache hit: %s", path)
            return arrays
    arrays = parse()
    try:
        _write(path, key, arrays, [s[0] for s in source_stats(sources)])
    except OSError as e:
        log.warning("cannot write the array cache in %s (%s); %s is parsed from its files on "
                    "every run. Set dataset.cache_dir=PATH (or $VAE_CACHE_DIR) to a writable "
                    "folder, or dataset.cache=false", path.parent, e.strerror or e, name)
    return arrays
