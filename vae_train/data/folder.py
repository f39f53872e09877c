"""``dataset=folder``: a folder of image files a user brings.

Layout (``dataset.path=DIR``):

* ``DIR/<class>/**/*.png`` (torchvision's ImageFolder convention): the sorted class folder
  names are the labels 0..K-1 and ``ImageData.classes``;
* ``DIR/*.png`` with no class folders: unlabelled (no classes, every label 0);
* ``DIR/train/`` and ``DIR/test/`` (or ``DIR/val/`` when there is no ``test/``), each as
  above: those are the splits (the test split's class folders must be among train's);
  otherwise a seeded split of the files: ``dataset.test_split`` of each class, chosen with
  ``dataset.split_seed``.

``dataset=video_folder`` (:class:`VideoFolder`) reads videos the same way: one folder of frame
images per sequence, below class folders or not, decoded into the same cache and viewed as
(N, T, C, H, W).

Image files are chosen by extension (case-insensitive, :data:`EXTENSIONS`); hidden files and
folders are passed over. The images are decoded once, in parallel, into a cache
(:mod:`vae_train.data.decode_cache`, which also says how each image is prepared) and come
back as :class:`vae_train.data.rows.Rows` of the memory-mapped cache file (with
``cache=false``: tensors decoded in memory). Labels are not cached: they follow from the file
list, which is part of the cache key.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vae_train.checks import Rule, integer, number, one_of, optional
from vae_train.data.base import DataSet, ImageData
from vae_train.data.decode_cache import CACHE_CHECKS, Decoded, FileStat, Preprocess, decode
from vae_train.data.rows import Rows
from vae_train.errors import UserError

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".webp", ".tif", ".tiff",
              ".gif", ".ppm", ".pgm", ".pbm", ".pnm")
SPLIT_DIRS = ("train", "test", "val")


def is_image(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in EXTENSIONS


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def walk_images(folder: Path, rel_to: Path, others: list | None = None) -> list[FileStat]:
    """Every image file under ``folder`` (recursively, symbolic links followed once), sorted,
    with paths relative to ``rel_to``; the names of other files go to ``others``."""
    out: list[FileStat] = []
    seen: set[tuple[int, int]] = set()

    def visit(d: str, prefix: str):
        try:
            st = os.stat(d)
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            return
        for e in entries:
            name = e.name
            if _hidden(name):
                continue
            try:
                if is_image(name) and e.is_file():
                    s = e.stat()
                    out.append(FileStat(prefix + name, s.st_size, s.st_mtime_ns))
                elif e.is_dir():
                    visit(e.path, prefix + name + "/")
                elif others is not None:
                    others.append(name)
            except OSError:
                continue

    rel = folder.relative_to(rel_to).as_posix()
    visit(str(folder), "" if rel == "." else rel + "/")
    out.sort(key=lambda f: f.rel)
    return out


def _subdirs(d: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(d) if e.is_dir() and not _hidden(e.name))
    except OSError:
        return []


class _Part:
    """One split folder (or the whole folder): its files, their labels, its class names."""

    def __init__(self, folder: Path, root: Path, others: list):
        self.folder = folder
        self.classes: list[str] = []
        self.files: list[FileStat] = []
        self.labels: list[int] = []
        self.loose: list[FileStat] = []      # images beside class folders: in no class
        direct = walk_images_flat(folder, root, others)
        per_class = []
        for name in _subdirs(folder):
            found = walk_images(folder / name, root, others)
            if found:
                per_class.append((name, found))
            else:
                log.info("%s holds no image files; it is not a class", folder / name)
        if per_class:
            self.classes = [name for name, _ in per_class]
            for k, (_, found) in enumerate(per_class):
                self.files += found
                self.labels += [k] * len(found)
            self.loose = direct
        else:
            self.files, self.labels = direct, [0] * len(direct)


def walk_images_flat(folder: Path, root: Path, others: list) -> list[FileStat]:
    """The image files directly in ``folder`` (not in its sub-folders), sorted."""
    out = []
    rel = folder.relative_to(root).as_posix()
    prefix = "" if rel == "." else rel + "/"
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return out
    for e in entries:
        if _hidden(e.name):
            continue
        try:
            if e.is_file() and is_image(e.name):
                s = e.stat()
                out.append(FileStat(prefix + e.name, s.st_size, s.st_mtime_ns))
            elif e.is_file():
                others.append(e.name)
        except OSError:
            continue
    return out


GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def guess_channels(root: Path, files: list[FileStat], look: int = 64) -> int:
    """1 when every one of up to ``look`` files spread over the list is a grey image (by its
    header, nothing decoded), else 3. A file that cannot be opened does not count."""
    from PIL import Image

    picks = sorted({int(i) for i in np.linspace(0, len(files) - 1, min(look, len(files)))})
    for i in picks:
        try:
            with Image.open(root / files[i].rel) as im:
                mode = im.mode
                if mode == "P":       # a palette of greys is grey
                    palette = im.getpalette() or []
                    grey = all(palette[j] == palette[j + 1] == palette[j + 2]
                               for j in range(0, len(palette) - 2, 3))
                    mode = "L" if grey else "RGB"
        except Exception:  # noqa: BLE001 - decoding reports bad files later
            continue
        if mode not in GREY_MODES:
            log.info("dataset.channels=null: colour images (%s is %s): 3 channels",
                     files[i].rel, mode)
            return 3
    log.info("dataset.channels=null: the images are grey: 1 channel")
    return 1


def seeded_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``labels``) of train and test: ``fraction * n_c`` (rounded, halves up)
    of each class c to test, chosen with ``seed``; at least one of each overall. Both sorted."""
    rng = np.random.default_rng(int(seed))
    test: list[np.ndarray] = []
    classes = np.unique(labels)
    for c in classes:
        members = np.flatnonzero(labels == c)
        k = int(np.floor(fraction * len(members) + 0.5))
        test.append(members[rng.permutation(len(members))[:k]])
    chosen = np.concatenate(test) if test else np.zeros(0, np.int64)
    n = len(labels)
    if len(chosen) == 0 and n >= 2:           # tiny set: still one test image
        chosen = rng.permutation(n)[:1]
    elif len(chosen) == n and n >= 2:
        chosen = chosen[1:]
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


class Folder(DataSet):
    """``dataset=folder dataset.path=DIR``: the image files under DIR (see the module)."""

    checks = {
        **CACHE_CHECKS,
        "path": optional(Rule(lambda v: isinstance(v, str) and v != "",
                              "a folder of images: dataset.path=DIR")),
        "test_split": number(0, 1, low_open=True, high_open=True),
        "channels": optional(one_of(1, 3)),
    }

    def __init__(self, path: str | None = None, image_size: int | None = None,
                 resize: str = "crop", channels: int | None = None, bad_files: str = "skip",
                 test_split: float = 0.1, cache: bool = True, cache_dir: str | None = None,
                 workers: int | None = None, verify_cache: bool = True, **common):
        super().__init__(**common)
        if path is None:
            raise UserError("dataset=folder needs a folder of images: dataset.path=DIR (one "
                            "sub-folder per class for labels)")
        self.path = Path(str(path)).expanduser()
        # channels None: chosen from the files (grey when every one looked at is grey)
        self.channels = None if channels is None else int(channels)
        self.prep = Preprocess(image_size=image_size, resize=resize, channels=self.channels or 3)
        self.bad_files, self.test_split = bad_files, float(test_split)
        self.cache, self.cache_dir = bool(cache), cache_dir
        self.workers, self.verify_cache = workers, bool(verify_cache)

    # -- finding the files ---------------------------------------------------------------------
    what_path = "a folder of images (with one sub-folder per class for labels)"

    def _check_path(self) -> Path:
        p = self.path
        if not p.exists():
            raise UserError(f"dataset.path={p} does not exist; point dataset.path at "
                            f"{self.what_path}")
        if not p.is_dir():
            raise UserError(f"dataset.path={p} is a file, not a folder; point dataset.path at "
                            "the folder that holds the images")
        return p.resolve()

    def _no_images(self, folder: Path, others: list) -> UserError:
        if not others and not _subdirs(folder):
            return UserError(f"dataset.path={self.path}: {folder} is empty; put image files "
                             "in it (in one sub-folder per class for labels)")
        kinds = sorted({os.path.splitext(o)[1].lower() or o for o in others})[:6]
        return UserError(f"dataset.path={self.path}: no image files under {folder} (found "
                         f"{len(others)} other files: {', '.join(kinds) or 'none'}); image "
                         f"files end in {', '.join(EXTENSIONS[:10])}, ...")

    def layout(self) -> tuple[list[FileStat], np.ndarray, list[str], dict[str, np.ndarray] | None]:
        """(files, labels, class names, {"train": positions, "test": positions} when the
        folder has split folders, else None)."""
        root = self._check_path()
        subs = set(_subdirs(root))
        test_dir = "test" if "test" in subs else "val" if "val" in subs else None
        if "train" in subs and test_dir is not None:
            others: list = []
            train, test = _Part(root / "train", root, others), _Part(root / test_dir, root, others)
            for part in (train, test):
                if not part.files:
                    raise self._no_images(part.folder, others)
            if bool(train.classes) != bool(test.classes):
                labelled, flat = (train, test) if train.classes else (test, train)
                raise UserError(f"dataset.path={self.path}: {labelled.folder} has class "
                                f"folders but {flat.folder} has none; give both the same class "
                                "folders, or neither")
            extra = [c for c in test.classes if c not in train.classes]
            if extra:
                raise UserError(f"dataset.path={self.path}: {test.folder} has class folders "
                                f"that {train.folder} lacks: {', '.join(extra[:5])}; give "
                                "both the same class folders")
            index = {c: k for k, c in enumerate(train.classes)}
            test_labels = [index[test.classes[k]] for k in test.labels] if test.classes \
                else test.labels
            for part in (train, test):
                if part.loose:
                    log.warning("%d image files directly in %s belong to no class folder; "
                                "they are left out (e.g. %s)", len(part.loose), part.folder,
                                part.loose[0].rel)
            ignored = sorted(subs - {"train", test_dir})
            if ignored:
                log.info("dataset.path=%s: using train/ and %s/ as the splits; ignoring %s",
                         self.path, test_dir, ", ".join(f"{d}/" for d in ignored))
            files = train.files + test.files
            labels = np.asarray(train.labels + test_labels, dtype=np.int64)
            n = len(train.files)
            return files, labels, train.classes, {"train": np.arange(n),
                                                  "test": np.arange(n, len(files))}
        others = []
        part = _Part(root, root, others)
        if not part.files:
            raise self._no_images(root, others)
        if part.loose:
            log.warning("%d image files directly in %s belong to no class folder; they are "
                        "left out (e.g. %s)", len(part.loose), root, part.loose[0].rel)
        return part.files, np.asarray(part.labels, dtype=np.int64), part.classes, None

    # -- reading -------------------------------------------------------------------------------
    def decoded(self, files: list[FileStat], classes: list[str]) -> Decoded:
        return decode(self.path.resolve(), files, self.prep, bad_files=self.bad_files,
                      cache=self.cache, cache_dir=self.cache_dir, workers=self.workers,
                      verify=self.verify_cache, name=self.name, meta={"classes": classes})

    def read(self) -> ImageData:
        files, labels, classes, splits = self.layout()
        if self.channels is None:
            self.prep = replace(self.prep, channels=guess_channels(self.path.resolve(), files))
        dec = self.decoded(files, classes)
        if splits is None:
            good = np.flatnonzero(dec.ok)
            tr, te = seeded_split(labels[good], self.test_split, self.split_seed)
            train_rows, test_rows = good[tr], good[te]
        else:
            train_rows = splits["train"][dec.ok[splits["train"]]]
            test_rows = splits["test"][dec.ok[splits["test"]]]
        for split, rows in (("train", train_rows), ("test", test_rows)):
            if len(rows) == 0:
                raise UserError(f"dataset.path={self.path}: the {split} split has no image "
                                "that decodes; add images to it")
        log.info("%s: %s train + %s test images of %s, %s", self.name, f"{len(train_rows):,}",
                 f"{len(test_rows):,}", "x".join(map(str, dec.array.shape[1:])),
                 f"{len(classes)} classes" if classes else "unlabelled")
        return ImageData(self.name, *self._split(dec, train_rows, labels),
                         *self._split(dec, test_rows, labels), classes=list(classes))

    def _split(self, dec: Decoded, rows: np.ndarray, labels: np.ndarray):
        y = torch.from_numpy(labels[rows].copy())
        if dec.path is None:                   # decoded in memory (cache=false)
            return torch.from_numpy(dec.array[rows]), y
        return Rows(dec.array, rows), y


class VideoFolder(Folder):
    """``dataset=video_folder dataset.path=DIR``: videos as folders of frame images, one folder
    per sequence (its frames in file-name order), in the layouts of ``dataset=folder``:
    ``DIR/<class>/<sequence>/*.png`` (labelled), ``DIR/<sequence>/*.png`` (unlabelled), and
    ``DIR/train/`` + ``DIR/test/`` (or ``val/``) as the splits, else ``test_split`` of the
    sequences of each class (seeded by ``split_seed``; a sequence is never split). Every
    sequence has ``frames`` frames: null takes the count of the first sequence and refuses one
    that differs; a number takes the first ``frames`` of each (fewer is refused). A sequence
    with a frame that does not decode is left out (``bad_files=skip``, the default). Examples
    are (N, T, C, H, W), frames decoded into the cache as for images."""

    checks = {"frames": optional(integer(1), "null (every sequence's own count, all equal) or "
                                             "an integer >= 1")}

    what_path = ("a folder of sequence folders of frame images (DIR/<sequence>/*.png, or "
                 "DIR/<class>/<sequence>/*.png for labels)")

    def __init__(self, path: str | None = None, frames: int | None = None, **kw):
        if path is None:
            raise UserError("dataset=video_folder needs a folder of sequence folders of frame "
                            "images: dataset.path=DIR (DIR/<sequence>/*.png, or "
                            "DIR/<class>/<sequence>/*.png for labels)")
        super().__init__(path=path, **kw)
        self.frames = None if frames is None else int(frames)

    def layout(self):
        """(frame files, their labels, class names, {"train", "test"} positions or None):
        below DIR (or each of its split folders) every frame is at <sequence>/<frame>
        (unlabelled) or <class>/<sequence>/<frame> (the sorted class names are the labels)."""
        root = self._check_path()
        subs = set(_subdirs(root))
        test_dir = "test" if "test" in subs else "val" if "val" in subs else None
        split = "train" in subs and test_dir is not None
        parts = [root / "train", root / test_dir] if split else [root]
        others: list = []
        found, inner = [], []
        for folder in parts:
            files = walk_images(folder, root, others)
            if not files:
                raise self._no_images(folder, others)
            cut = len(folder.relative_to(root).as_posix()) + 1 if folder != root else 0
            found.append(files)
            inner.append([f.rel[cut:].split("/") for f in files])
        depths = {len(p) for part in inner for p in part}
        if len(depths) != 1 or depths.pop() not in (2, 3):
            bad = next(f.rel for fs, ps in zip(found, inner) for f, p in zip(fs, ps)
                       if len(p) not in (2, 3))
            raise UserError(f"dataset.path={self.path}: every frame must be at "
                            "<sequence>/<frame> or <class>/<sequence>/<frame> (below train/ and "
                            f"test/ when there are split folders), all alike; found {bad}")
        labelled = len(inner[0][0]) == 3
        classes = sorted({p[0] for p in inner[0]}) if labelled else []
        if labelled and len(inner) == 2:
            extra = sorted({p[0] for p in inner[1]} - set(classes))
            if extra:
                raise UserError(f"dataset.path={self.path}: {parts[1]} has class folders that "
                                f"{parts[0]} lacks: {', '.join(extra[:5])}; give both the same "
                                "class folders")
        index = {c: k for k, c in enumerate(classes)}
        labels = np.asarray([index[p[0]] if labelled else 0 for part in inner for p in part],
                            dtype=np.int64)
        files = [f for part in found for f in part]
        if not split:
            return files, labels, classes, None
        n = len(found[0])
        return files, labels, classes, {"train": np.arange(n), "test": np.arange(n, len(files))}

    def sequences(self, files: list[FileStat]) -> list[tuple[int, int]]:
        """[start, end) of each sequence's frames in ``files`` (frames of one folder are
        consecutive there: the walk lists a folder's files together, sorted)."""
        spans: list[tuple[int, int]] = []
        seen: set[str] = set()
        last = None
        for i, f in enumerate(files):
            folder = f.rel.rsplit("/", 1)[0] if "/" in f.rel else ""
            if spans and folder == last:
                spans[-1] = (spans[-1][0], i + 1)
                continue
            if folder in seen:                       # a folder's frames apart: not expected
                raise UserError(f"dataset.path={self.path}: the frames of {folder or '.'} are "
                                "not listed together; put each sequence's frames in one folder")
            seen.add(folder)
            spans.append((i, i + 1))
            last = folder
        return spans

    def read(self) -> ImageData:
        files, labels, classes, splits = self.layout()
        spans = self.sequences(files)
        t = self.frames or (spans[0][1] - spans[0][0])
        keep: list[int] = []
        for a, b in spans:
            if (self.frames is None and b - a != t) or b - a < t:
                folder = files[a].rel.rsplit("/", 1)[0] if "/" in files[a].rel else "."
                first = files[spans[0][0]].rel.rsplit("/", 1)[0]
                want = (f"{t} (dataset.frames)" if self.frames else
                        f"{t}, as {first} has (set dataset.frames=N to take the first N of "
                        "each)")
                raise UserError(f"dataset.path={self.path}: sequence {folder} has {b - a} "
                                f"frames; every sequence needs {want}")
            keep += range(a, a + t)
        keep_arr = np.asarray(keep, dtype=np.int64)
        files = [files[i] for i in keep]
        labels = labels[keep_arr]
        first_pos = keep_arr[::t]                    # each sequence's first file, before trimming
        if self.channels is None:
            self.prep = replace(self.prep, channels=guess_channels(self.path.resolve(), files))
        dec = self.decoded(files, classes)
        n_seq = len(files) // t
        ok = dec.ok.reshape(n_seq, t).all(1)
        if not ok.all():
            log.warning("%s: %d of %d sequences have a frame that does not decode; they are left "
                        "out", self.name, int((~ok).sum()), n_seq)
        seq_labels = labels[::t]
        if splits is None:
            good = np.flatnonzero(ok)
            tr, te = seeded_split(seq_labels[good], self.test_split, self.split_seed)
            train_rows, test_rows = good[tr], good[te]
        else:
            in_train = np.isin(first_pos, splits["train"])
            train_rows = np.flatnonzero(in_train & ok)
            test_rows = np.flatnonzero(~in_train & ok)
        for split, rows in (("train", train_rows), ("test", test_rows)):
            if len(rows) == 0:
                raise UserError(f"dataset.path={self.path}: the {split} split has no sequence "
                                "whose frames all decode; add sequences to it")
        videos = dec.array.reshape(n_seq, t, *dec.array.shape[1:])     # a view: no copy
        vid = Decoded(videos, ok, dec.skipped, dec.path, dec.hit)
        log.info("%s: %s train + %s test sequences of %d frames of %s, %s", self.name,
                 f"{len(train_rows):,}", f"{len(test_rows):,}", t,
                 "x".join(map(str, dec.array.shape[1:])),
                 f"{len(classes)} classes" if classes else "unlabelled")
        return ImageData(self.name, *self._split(vid, train_rows, seq_labels),
                         *self._split(vid, test_rows, seq_labels), classes=list(classes))
