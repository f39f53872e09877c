"""Image files decoded once into one uint8 array on disk, and found again by the next run.

A data set of image files (``dataset=folder``, ``dataset=celeba``) hands :func:`decode` the
files it wants (relative paths under a root, each with its size and mtime) and how to prepare
them (:class:`Preprocess`: side, crop or pad, channels). The first run decodes them in
parallel (a process pool of ``workers``, chunks of files, a progress bar) straight into a
``.npy`` file under the cache directory; every later run with the same files and options maps
that file (``np.load(mmap_mode="r")``) and is ready in about the time it takes to list and
stat the files.

**The cache entry** is ``<cache dir>/images/<folder>-<group>-<key>.npy`` plus a ``.json``
manifest beside it. ``group`` hashes the folder's absolute path with the options; ``key``
hashes the format version, the options and every file's relative path, size and mtime_ns, so
a changed, added or removed file (or another option) is another key and a rebuild. When a new
entry is built, the older entries of the same group (same folder, same options) are deleted.
The array is written under a temporary name (space reserved first), fsynced and renamed; the
manifest (shape, dtype, the files' digest, the skipped files, the byte count and CRC-32 of the
whole ``.npy``) is written last, atomically, so an entry without a manifest is incomplete.

**Never trusted.** Before an entry is used its manifest must parse and match (format, key,
shape), the ``.npy`` must have the recorded size and header, and (``verify=True``, the
default) its CRC-32, read in 16 MiB blocks, must match. Anything else is logged as a warning
with the reason and the entry is rebuilt.

**Files that do not decode** (truncated, not an image after all): with ``bad_files="skip"``
their rows stay zero and are left out of :attr:`Decoded.ok`, and a warning names up to ten of
them with the count; with ``bad_files="error"`` the first one stops the run with one line
naming the file and PIL's reason.

**Preparing an image** (:func:`decode_image`): EXIF orientation applied; palette, grey+alpha,
CMYK, YCbCr, ... converted by PIL; 16-bit grey (``I;16``, ``I``) scaled to 8 bits (divided
by 257); transparency composited onto **black** (the colour padding uses too); grey to RGB by
repeating the channel, RGB to grey by PIL's ITU-R 601 luma. Then an optional centre square
(``crop``, pixels of the source), then the side: ``resize="crop"`` scales the short side to
``image_size`` and keeps the centre square, ``resize="pad"`` scales the long side to
``image_size`` and pads to a square with zeros. Resampling is bilinear with antialiasing
(as torchvision's Resize); JPEGs larger than needed are decoded at a reduced scale by libjpeg
first (PIL's ``draft``), which is much faster and changes values only slightly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import re
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from vae_train.checks import BOOLEAN, Rule, integer, one_of, optional
from vae_train.errors import UserError
from vae_train.files import write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1          # bump when decoding changes: older entries then miss (new key)
BAD_FILES = ("skip", "error")
RESIZE = ("crop", "pad")
MIN_POOL_FILES = 256        # fewer files than this are decoded in this process (no pool)
CRC_BLOCK = 16 << 20        # bytes read at a time for the checksum
SHOW_SKIPPED = 10           # skipped files named in the warning

# The options every cached image set shares, with their rules (a data set's ``checks``).
CACHE_CHECKS = {
    "image_size": optional(integer(1)),
    "resize": one_of(*RESIZE),
    "channels": one_of(1, 3),
    "bad_files": one_of(*BAD_FILES),
    "cache": BOOLEAN,
    "cache_dir": Rule(lambda v: v is None or (isinstance(v, str) and v != ""),
                      "null (the default cache folder) or a folder path"),
    "workers": optional(integer(1), "null (all cores) or a positive integer"),
    "verify_cache": BOOLEAN,
}


@dataclass(frozen=True)
class Preprocess:
    """How every image is prepared: ``crop`` (a centre square of that many source pixels,
    taken first; None: none), then ``image_size`` (the output side; None: keep the size, which
    must then be the same for every file) by ``resize`` (crop | pad), with ``channels`` (1|3)."""

    image_size: int | None = None
    resize: str = "crop"
    channels: int = 3
    crop: int | None = None


@dataclass(frozen=True)
class FileStat:
    """A file to decode: its path relative to the root (``/`` separators), size, mtime_ns."""

    rel: str
    size: int
    mtime_ns: int


@dataclass
class Decoded:
    """The decoded images: ``array`` (N, C, H, W) uint8, row i from ``files[i]`` (a memory
    map of the cache file, or an array in memory with ``cache=False``); ``ok`` marks the rows
    that decoded (the others are zeros); ``skipped`` (file, reason) of the others."""

    array: np.ndarray
    ok: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    path: Path | None = None       # the cache file, when there is one
    hit: bool = False              # read from the cache (nothing decoded)


# -- where -------------------------------------------------------------------------------------
def cache_root(cache_dir: str | None = None) -> Path:
    """``cache_dir``, else ``$VAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/vae-train``, else
    ``~/.cache/vae-train``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("VAE_CACHE_DIR"):
        return Path(os.environ["VAE_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vae-train"


def default_workers() -> int:
    """Every core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:      # not on Linux
        return max(1, os.cpu_count() or 1)


def stat_files(root: Path, rels) -> tuple[list[FileStat], list[str]]:
    """(FileStat of each of ``rels`` that exists under ``root``, the ``rels`` that do not)."""
    found, missing = [], []
    for rel in rels:
        try:
            st = os.stat(root / rel)
        except OSError:
            missing.append(rel)
            continue
        found.append(FileStat(rel, st.st_size, st.st_mtime_ns))
    return found, missing


def _digest(root: Path, files: list[FileStat], prep: Preprocess, bad_files: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "preprocess": asdict(prep),
                         "bad_files": bad_files}, sort_keys=True).encode())
    h.update("".join(f"{f.rel}\t{f.size}\t{f.mtime_ns}\n" for f in files).encode())
    return h.hexdigest()


def _group(root: Path, prep: Preprocess, bad_files: str) -> str:
    text = json.dumps({"root": str(root.resolve()), "preprocess": asdict(prep),
                       "bad_files": bad_files}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def entry_paths(root: Path, files: list[FileStat], prep: Preprocess, bad_files: str,
                cache_dir: str | None = None) -> tuple[Path, Path, str]:
    """(the ``.npy``, the manifest, the full key) of the cache entry for these files."""
    key = _digest(root, files, prep, bad_files)
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name or "root")[:40]
    stem = f"{label}-{_group(root, prep, bad_files)}-{key[:20]}"
    folder = cache_root(cache_dir) / "images"
    return folder / f"{stem}.npy", folder / f"{stem}.json", key


# -- one image ---------------------------------------------------------------------------------
def _geometry(w: int, h: int, prep: Preprocess):
    """(source box (l, t, r, b), resized (w, h), paste offset or None) for a w x h image."""
    box = (0.0, 0.0, float(w), float(h))
    if prep.crop is not None:
        c = min(prep.crop, w, h)
        left, top = int(round((w - c) / 2)), int(round((h - c) / 2))
        box = (float(left), float(top), float(left + c), float(top + c))
    bw, bh = box[2] - box[0], box[3] - box[1]
    s = prep.image_size
    if s is None:
        return box, (int(bw), int(bh)), None
    if prep.resize == "crop":
        side = min(bw, bh)
        cx, cy = box[0] + bw / 2, box[1] + bh / 2
        return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), (s, s), None
    scale = s / max(bw, bh)
    out = (max(1, min(s, round(bw * scale))), max(1, min(s, round(bh * scale))))
    return box, out, ((s - out[0]) // 2, (s - out[1]) // 2)


def output_hw(w: int, h: int, prep: Preprocess) -> tuple[int, int]:
    """(H, W) of a w x h image after ``prep``."""
    if prep.image_size is not None:
        return prep.image_size, prep.image_size
    _, (ow, oh), _ = _geometry(w, h, prep)
    return oh, ow


def _to_8bit(img):
    """Any PIL mode -> an image in L, RGB or RGBA (alpha not yet composited)."""
    from PIL import Image

    mode = img.mode
    if mode in ("L", "RGB", "RGBA"):
        return img
    if mode.startswith("I"):                       # 16-bit (or 32-bit int) grey
        a = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    if mode == "F":                                # float grey: [0, 1] scaled, else clipped
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        a = a * 255.0 if a.size and a.max() <= 1.0 else a
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        return img.convert("RGBA" if has_alpha else "RGB")
    if mode in ("LA", "La", "RGBa", "RGBX"):
        return img.convert("RGBA" if mode != "RGBX" else "RGB")
    if mode == "1":
        return img.convert("L")
    return img.convert("RGB")                      # CMYK, YCbCr, LAB, HSV


def _draft_scale(w: int, h: int, prep: Preprocess) -> int:
    """The largest JPEG reduction (8, 4, 2 or 1) that still leaves at least the output's pixels
    across the region used, and (with ``crop``) keeps the crop's edges on whole reduced
    pixels, so that nothing outside the crop is seen."""
    box, out, _ = _geometry(w, h, prep)
    need = max(out[0] / (box[2] - box[0]), out[1] / (box[3] - box[1]))
    edges = (box[0], box[1], box[2] - box[0], w - box[2], h - box[3]) if prep.crop else ()
    for s in (8, 4, 2):
        if s * need <= 1 and all(int(e) % s == 0 for e in edges):
            return s
    return 1


def decode_image(path: str | Path, prep: Preprocess) -> np.ndarray:
    """One image file as uint8 (C, H, W), prepared as ``prep`` says (see the module). Raises
    whatever PIL raises for a file it cannot decode."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        sx = sy = 1.0
        if prep.image_size is not None and img.format == "JPEG":
            w, h = img.size
            s = _draft_scale(w, h, prep)
            if s > 1:          # libjpeg decodes at 1/s of the size: much faster
                img.draft("L" if prep.channels == 1 else "RGB",
                          (math.ceil(w / s), math.ceil(h / s)))
                sx, sy = img.size[0] / w, img.size[1] / h
        orientation = img.getexif().get(0x0112, 1) if img.format in ("JPEG", "TIFF", "WEBP",
                                                                     "PNG") else 1
        if min(img.size) < 1:
            raise ValueError(f"the image is {img.size[0]}x{img.size[1]} pixels (zero size)")
        im = _to_8bit(img)
        im.load()
    if orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        sx, sy = (sy, sx) if orientation in (5, 6, 7, 8) else (sx, sy)
    if im.mode == "RGBA":
        flat = Image.new("RGB", im.size, (0, 0, 0))
        flat.paste(im, mask=im.getchannel("A"))
        im = flat
    if prep.channels == 1 and im.mode != "L":
        im = im.convert("L")
    # geometry in the (possibly draft-reduced, rotated) image's own pixels
    w0, h0 = round(im.size[0] / sx), round(im.size[1] / sy)
    if prep.crop is not None:       # the centre square first: nothing outside it is seen
        c = min(prep.crop, w0, h0)
        left, top = int(round((w0 - c) / 2)), int(round((h0 - c) / 2))
        im = im.crop((round(left * sx), round(top * sy), round((left + c) * sx),
                      round((top + c) * sy)))
        w0 = h0 = c
        sx, sy = im.size[0] / c, im.size[1] / c
    if prep.image_size is not None:
        box, out, offset = _geometry(w0, h0, replace(prep, crop=None))
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        # crop mode: the centre square of the box, resized (as resizing the short side, then
        # cropping: pixels just outside the square weigh in at its edges)
        im = im.resize(out, Image.BILINEAR, box=box, reducing_gap=3.0)
        if offset is not None:
            canvas = Image.new(im.mode, (prep.image_size, prep.image_size), 0)
            canvas.paste(im, offset)
            im = canvas
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim == 2:
        a = a[None]
        if prep.channels == 3:
            a = np.repeat(a, 3, axis=0)
    else:
        a = a.transpose(2, 0, 1)
    return a


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _decode_chunk(task):
    """Decode files ``start..`` into rows ``start..``: into the ``.npy`` at ``out`` (opened
    here) or into an array returned. Returns (start, array or None, failures [(i, reason)],
    size mismatch (i, (H, W)) or None)."""
    start, paths, prep, hw, out = task
    dest = np.load(out, mmap_mode="r+") if out is not None else None
    arr = None if dest is not None else np.zeros((len(paths), prep.channels, *hw), np.uint8)
    failures, mismatch = [], None
    for k, p in enumerate(paths):
        try:
            img = decode_image(p, prep)
        except Exception as e:  # noqa: BLE001 - any failure is this file's
            failures.append((start + k, _reason(e)))
            continue
        if img.shape[1:] != tuple(hw):
            mismatch = (start + k, img.shape[1:])
            break
        if dest is not None:
            dest[start + k] = img
        else:
            arr[k] = img
    if dest is not None:
        dest.flush()
        del dest
    return start, arr, failures, mismatch


# -- many images -------------------------------------------------------------------------------
def _reference_hw(root: Path, files: list[FileStat], prep: Preprocess) -> tuple[int, tuple]:
    """(index of the first file whose header PIL reads, output (H, W) of every image)."""
    from PIL import Image

    if prep.image_size is not None:
        return -1, (prep.image_size, prep.image_size)
    for i, f in enumerate(files):
        try:
            with Image.open(root / f.rel) as img:
                w, h = img.size
                orientation = img.getexif().get(0x0112, 1) if img.format in (
                    "JPEG", "TIFF", "WEBP", "PNG") else 1
        except Exception:  # noqa: BLE001 - a bad file: the next one
            continue
        if min(w, h) < 1:       # zero size: it fails to decode (and is skipped or refused)
            continue
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        return i, output_hw(w, h, prep)
    return -1, (0, 0)


def _chunks(n: int, workers: int) -> int:
    return int(min(512, max(8, n // (workers * 8) if workers > 1 else 256)))


def _run(root: Path, files: list[FileStat], prep: Preprocess, hw, out: Path | None,
         workers: int, bad_files: str, name: str, ref: int):
    """Decode every file; (array or None, failures {i: reason}). Raises UserError for a size
    mismatch, or for the first bad file when ``bad_files="error"``."""
    from tqdm.auto import tqdm

    n = len(files)
    size = _chunks(n, workers)
    tasks = [(a, [str(root / f.rel) for f in files[a:a + size]], prep, hw,
              None if out is None else str(out)) for a in range(0, n, size)]
    arr = None if out is not None else np.zeros((n, prep.channels, *hw), np.uint8)
    failures: dict[int, str] = {}
    pool, used = None, 1
    if workers > 1 and n >= MIN_POOL_FILES and not mp.current_process().daemon:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # fork on Linux (as torch's DataLoader): the workers start at once, nothing re-imported
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else None)
        used = min(workers, len(tasks))
        pool = ProcessPoolExecutor(used, mp_context=ctx)
        results = (f.result() for f in as_completed([pool.submit(_decode_chunk, t)
                                                      for t in tasks]))
    else:
        results = map(_decode_chunk, tasks)
    bar = tqdm(total=n, desc=f"decoding {name}", unit="img", leave=False, disable=None,
               dynamic_ncols=True)
    done = False
    try:
        for start, part, bad, mismatch in results:
            if mismatch is not None:
                i, got = mismatch
                first = files[ref].rel if ref >= 0 else "the first image"
                raise UserError(
                    f"images differ in size: {root / first} gives {hw[1]}x{hw[0]} but "
                    f"{root / files[i].rel} gives {got[1]}x{got[0]} (width x height); set "
                    "dataset.image_size=SIDE (with dataset.resize=crop or pad) to bring "
                    "them to one size")
            if bad and bad_files == "error":
                i, why = min(bad)
                raise UserError(f"cannot decode {root / files[i].rel}: {why}; fix or remove "
                                "it, or set dataset.bad_files=skip to leave such files out")
            failures.update(bad)
            if part is not None:
                arr[start:start + len(part)] = part
            bar.update(len(tasks[start // size][1]))
        done = True
    except Exception as e:
        from concurrent.futures.process import BrokenProcessPool

        if isinstance(e, BrokenProcessPool):
            raise UserError(f"a process decoding {root} died ({e}; out of memory?); set "
                            "dataset.workers to fewer processes, or 1") from None
        raise
    finally:
        bar.close()
        if pool is not None:          # on an error: the running chunks finish, no new ones
            pool.shutdown(wait=done, cancel_futures=True)
    return arr, failures, used


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(CRC_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def _check_entry(npy: Path, manifest: Path, key: str, n: int, channels: int,
                 image_size: int | None, verify: bool) -> tuple[np.ndarray, dict]:
    """The mapped array and manifest of a cache entry; ValueError saying why it is unusable."""
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"its manifest is unreadable ({_reason(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ValueError("its manifest is of another format")
    if meta.get("key") != key:
        raise ValueError("its manifest belongs to other files or options")
    try:
        shape = tuple(int(s) for s in meta["shape"])
        nbytes, crc = int(meta["bytes"]), int(meta["crc32"])
        skipped = [(int(s["row"]), str(s["file"]), str(s["reason"])) for s in meta["skipped"]]
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"its manifest lacks a field ({_reason(e)})") from None
    want = (n, channels, *((image_size, image_size) if image_size else shape[2:]))
    if shape != want or meta.get("dtype") != "uint8":
        raise ValueError(f"its manifest records shape {shape}, expected {want} uint8")
    try:
        actual = npy.stat().st_size
    except OSError as e:
        raise ValueError(f"its array file is missing ({_reason(e)})") from None
    if actual != nbytes:
        raise ValueError(f"its array file has {actual} bytes, the manifest says {nbytes} "
                         "(truncated or overwritten)")
    if verify and _crc32(npy) != crc:
        raise ValueError("its array file fails its CRC-32 check (the bytes changed)")
    try:
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise ValueError(f"its array file does not open ({_reason(e)})") from None
    if arr.shape != shape or arr.dtype != np.uint8:
        raise ValueError(f"its array file holds {arr.shape} {arr.dtype}, expected {shape} uint8")
    if any(not 0 <= r < n for r, _, _ in skipped):
        raise ValueError("its manifest lists skipped rows out of range")
    meta["skipped"] = skipped
    return arr, meta


def _remove_older(npy: Path) -> None:
    """Delete the other entries of this entry's group (same folder and options), and the
    temporary files of builds in this group whose process is gone."""
    stem = npy.stem.rsplit("-", 1)[0]
    for old in npy.parent.glob(f"{stem}-*"):
        if old.stem != npy.stem and old.suffix in (".npy", ".json"):
            try:
                old.unlink()
                log.info("removed the replaced decode cache entry %s", old)
            except OSError:
                pass
    for tmp in npy.parent.glob(f".{stem}-*.tmp"):
        pid = tmp.suffixes[-2][1:] if len(tmp.suffixes) >= 2 else ""
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                _unlink(tmp)
            except OSError:
                pass


def make_room(path: Path, what: str, logger: logging.Logger = log) -> bool:
    """Whether a cache file can be (re)written at ``path``: something that is not a regular
    file in its place (an empty folder, a dangling or looping link, a pipe) is removed with a
    warning naming it (``what``: e.g. "dSprites cache"); a folder with files in it is kept and
    False returned (the caller then keeps its data in memory)."""
    if path.is_file() or not os.path.lexists(path):
        return True
    if path.is_dir() and not path.is_symlink():
        try:
            path.rmdir()
        except OSError:
            logger.warning("%s %s is a folder with files in it, not a cache file; it is left as it "
                        "is and the data stay in memory (every run, until it is moved away)",
                        what, path)
            return False
        logger.warning("%s %s was an empty folder; removed, the cache file is written in its place",
                    what, path)
        return True
    try:
        path.unlink()
    except OSError as e:
        logger.warning("%s %s is not a file and cannot be removed (%s); the data stay in memory",
                    what, path, e.strerror or e)
        return False
    logger.warning("%s %s was not a file (a link or a pipe); removed, the cache file is written in "
                "its place", what, path)
    return True


def _unlink(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(folder: Path, e: OSError) -> UserError:
    return UserError(f"cannot write the decode cache in {folder} ({e.strerror or e}); set "
                     "dataset.cache_dir=PATH (or $VAE_CACHE_DIR) to a writable folder with "
                     "room, or dataset.cache=false to decode in memory each run")


def _warn_skipped(root: Path, skipped: list[tuple[str, str]], n: int) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{rel} ({why})" for rel, why in skipped[:SHOW_SKIPPED])
    more = f"; and {len(skipped) - SHOW_SKIPPED} more" if len(skipped) > SHOW_SKIPPED else ""
    log.warning("skipped %d of %d files under %s that do not decode (dataset.bad_files=skip): "
                "%s%s", len(skipped), n, root, shown, more)


def decode(root: str | Path, files: list[FileStat], prep: Preprocess, *, bad_files: str = "skip",
           cache: bool = True, cache_dir: str | None = None, workers: int | None = None,
           verify: bool = True, name: str = "images", meta: dict | None = None) -> Decoded:
    """``files`` (under ``root``) decoded as ``prep`` says, from the cache when an intact entry
    for exactly these files and options is there, else decoded (and cached when ``cache``).
    ``meta``: JSON-able facts recorded in the manifest (e.g. the class names)."""
    root = Path(root)
    n = len(files)
    workers = default_workers() if workers is None else int(workers)
    npy = manifest = None
    if cache:
        npy, manifest, key = entry_paths(root, files, prep, bad_files, cache_dir)
        if manifest.exists() or npy.exists():
            t0 = time.perf_counter()
            try:
                arr, m = _check_entry(npy, manifest, key, n, prep.channels, prep.image_size,
                                      verify)
            except ValueError as why:
                log.warning("decode cache entry %s is not usable: %s; decoding again", npy, why)
            else:
                ok = np.ones(n, dtype=bool)
                ok[[r for r, _, _ in m["skipped"]]] = False
                skipped = [(rel, why) for _, rel, why in m["skipped"]]
                _warn_skipped(root, skipped, n)
                log.info("decode cache hit: %s images %s from %s in %.2f s%s", f"{n:,}",
                         "x".join(map(str, arr.shape[1:])), npy, time.perf_counter() - t0,
                         " (checksum verified)" if verify else "")
                return Decoded(arr, ok, skipped, npy, hit=True)
    if cache and not all([make_room(npy, "decode cache entry"),
                          make_room(manifest, "decode cache manifest")]):
        cache = False
    ref, hw = _reference_hw(root, files, prep)
    if hw == (0, 0):
        reason = ""
        if files:
            try:
                decode_image(root / files[0].rel, prep)
            except Exception as e:  # noqa: BLE001
                reason = f" ({root / files[0].rel}: {_reason(e)})"
        raise UserError(f"none of the {n} image files under {root} can be read{reason}; "
                        "check that they are images PIL can open")
    shape = (n, prep.channels, *hw)
    t0 = time.perf_counter()
    tmp = None
    if cache:
        tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp")
        try:
            npy.parent.mkdir(parents=True, exist_ok=True)
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            offset = mm.offset
            del mm
            if hasattr(os, "posix_fallocate") and n:
                fd = os.open(tmp, os.O_RDWR)
                try:                    # reserve the space: a full disk is an error, not SIGBUS
                    os.posix_fallocate(fd, offset, int(np.prod(shape)))
                except OSError as e:
                    if e.errno not in (95, 22):   # EOPNOTSUPP / EINVAL: file system cannot
                        raise
                finally:
                    os.close(fd)
        except OSError as e:
            _unlink(tmp)
            raise _write_error(npy.parent, e) from None
    try:
        arr, failures, used = _run(root, files, prep, hw, tmp, workers, bad_files, name, ref)
    except BaseException:
        _unlink(tmp)
        raise
    seconds = time.perf_counter() - t0
    ok = np.ones(n, dtype=bool)
    ok[list(failures)] = False
    skipped = [(files[i].rel, failures[i]) for i in sorted(failures)]
    rate = n / seconds if seconds > 0 else float("inf")
    log.info("decoded %s images from %s in %.1f s: %s images/s with %d worker%s (%s per "
             "worker)", f"{n:,}", root, seconds, f"{rate:,.0f}", used, "s" * (used > 1),
             f"{rate / used:,.0f}")
    _warn_skipped(root, skipped, n)
    if not ok.any():
        raise UserError(f"none of the {n} image files under {root} can be decoded (e.g. "
                        f"{skipped[0][0]}: {skipped[0][1]}); check that they are images")
    if not cache:
        return Decoded(arr, ok, skipped)
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, npy)
        _fsync_dir(npy.parent)
        record = {"format": FORMAT_VERSION, "key": key, "root": str(root.resolve()),
                  "preprocess": asdict(prep), "bad_files": bad_files, "shape": list(shape),
                  "dtype": "uint8", "files": n,
                  "skipped": [{"row": i, "file": files[i].rel, "reason": failures[i]}
                              for i in sorted(failures)],
                  "bytes": npy.stat().st_size, "crc32": _crc32(npy),
                  "decode_seconds": round(seconds, 3),
                  "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "meta": meta or {}}
        write_json(manifest, record)            # last: an entry without it is incomplete
    except OSError as e:
        _unlink(tmp)
        raise _write_error(npy.parent, e) from None
    _remove_older(npy)
    return Decoded(np.load(npy, mmap_mode="r"), ok, skipped, npy)
