"""``dataset=celeba``: CelebA's aligned faces (Liu et al. 2015), 202,599 JPEGs of 178x218,
centre-cropped to 148x148 and resized to 64x64 (the usual VAE preprocessing), decoded once
through :mod:`vae_train.data.decode_cache`.

Layout (torchvision's): ``<root>/celeba/img_align_celeba/*.jpg`` with
``list_eval_partition.txt`` (0 train, 1 valid, 2 test) and ``list_attr_celeba.txt`` (40
attributes, -1/1) beside the image folder; ``<root>/img_align_celeba`` with the two lists in
``<root>`` is found too. Train is partition 0 (and 1 with ``include_valid=true``), test is
partition 2; every listed image is decoded (so switching ``include_valid`` reuses the cache).

``attributes=[Smiling,Male]`` (or ``all``): the labels are an int64 (N, A) multi-hot tensor
(1 where the attribute is present) and ``ImageData.classes`` the attribute names; without
attributes the set is unlabelled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vae_train.checks import BOOLEAN, Rule, integer, optional
from vae_train.data.base import DataSet, ImageData
from vae_train.data.decode_cache import CACHE_CHECKS, Preprocess, decode, stat_files
from vae_train.data.rows import Rows
from vae_train.errors import UserError, first_line

log = logging.getLogger(__name__)

IMAGES = "img_align_celeba"
PARTITION = "list_eval_partition.txt"
ATTRIBUTES = "list_attr_celeba.txt"
ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young")


def _attribute_list(v) -> bool:
    if v is None or v == "all":
        return True
    return isinstance(v, Sequence) and not isinstance(v, str) and all(
        isinstance(a, str) and a for a in v)


def read_partition(path: Path) -> tuple[list[str], np.ndarray]:
    """(file names, partition 0/1/2 of each) from ``list_eval_partition.txt``."""
    names, parts = [], []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {first_line(e)}") from None
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise UserError(f"{path}:{n}: expected '<image>.jpg 0|1|2', got {line.strip()!r}; "
                            "the file is damaged, get it again")
        names.append(fields[0])
        parts.append(int(fields[1]))
    if not names:
        raise UserError(f"{path} lists no images; the file is damaged, get it again")
    return names, np.asarray(parts, dtype=np.int8)


def read_attributes(path: Path) -> tuple[list[str], dict[str, int], np.ndarray]:
    """(attribute names, file name -> row, (N, 40) int8 of -1/1) from
    ``list_attr_celeba.txt`` (a count line, a line of names, then a row per image)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {first_line(e)}") from None
    if len(lines) < 2:
        raise UserError(f"{path} has no attribute names line; the file is damaged, get it again")
    names = lines[1].split()
    rows = [line.split() for line in lines[2:] if line.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) != len(names) + 1), None)
    if not names or bad is not None:
        at = f" (line {bad + 3} has {len(rows[bad]) - 1} values)" if bad is not None else ""
        raise UserError(f"{path}: expected {len(names)} values per image after the names line"
                        f"{at}; the file is damaged, get it again")
    try:
        values = np.asarray([r[1:] for r in rows], dtype=np.int8)
    except ValueError as e:
        raise UserError(f"{path}: a value is not -1 or 1 ({first_line(e)}); the file is "
                        "damaged, get it again") from None
    bad = ~np.isin(values, (-1, 0, 1))           # 1 present; -1 (or 0) absent
    if bad.any():
        r, c = (int(i[0]) for i in np.nonzero(bad))
        raise UserError(f"{path}:{r + 3}: {names[c]} is {int(values[r, c])}, not -1 or 1; the "
                        "file is damaged, get it again")
    return names, {r[0]: i for i, r in enumerate(rows)}, values


def _check_attributes(wanted, known) -> None:
    unknown = [a for a in wanted if a not in known]
    if unknown:
        raise UserError(f"dataset.attributes: {', '.join(unknown)} "
                        f"{'is' if len(unknown) == 1 else 'are'} not CelebA attribute"
                        f"{'' if len(unknown) == 1 else 's'}; the {len(known)} are: "
                        f"{', '.join(known)}")


class CelebA(DataSet):
    """``dataset=celeba`` (see the module)."""

    checks = {
        **{k: v for k, v in CACHE_CHECKS.items() if k != "resize"},
        "crop": optional(integer(1)),
        "attributes": Rule(_attribute_list, "null, all, or a list of attribute names "
                                            "(e.g. [Smiling,Male])"),
        "include_valid": BOOLEAN,
        "download": BOOLEAN,
    }

    def __init__(self, root: str, download: bool = True, attributes=None,
                 include_valid: bool = False, image_size: int | None = 64,
                 crop: int | None = 148, channels: int = 3, bad_files: str = "skip",
                 cache: bool = True, cache_dir: str | None = None, workers: int | None = None,
                 verify_cache: bool = True, **common):
        super().__init__(**common)
        self.root = Path(str(root)).expanduser()
        self.download = bool(download)
        self.attributes = attributes if attributes in (None, "all") else [str(a) for a in
                                                                          attributes]
        if self.attributes not in (None, "all"):
            _check_attributes(self.attributes, ATTRIBUTE_NAMES)   # before anything is read
        self.include_valid = bool(include_valid)
        self.prep = Preprocess(image_size=image_size, resize="crop", channels=int(channels),
                               crop=crop)
        self.bad_files, self.cache, self.cache_dir = bad_files, bool(cache), cache_dir
        self.workers, self.verify_cache = workers, bool(verify_cache)

    # -- finding it ----------------------------------------------------------------------------
    def places(self) -> list[Path]:
        return [self.root / "celeba", self.root]

    def _needs(self) -> tuple[str, ...]:
        return (IMAGES, PARTITION) + ((ATTRIBUTES,) if self.attributes else ())

    def _find(self) -> Path | None:
        for d in self.places():
            if (d / IMAGES).is_dir() and all((d / n).is_file() for n in self._needs()[1:]):
                return d
        return None

    def _try_download(self) -> str:
        """torchvision's download into ``root``; why it failed ('' if it did not)."""
        import torchvision.datasets as tvd

        log.info("CelebA not found locally; trying torchvision's download into %s", self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tvd.CelebA(str(self.root), split="all", target_type="attr", download=True)
        except Exception as e:  # noqa: BLE001 - any failure becomes one line for the user
            return first_line(e)
        return ""

    def locate(self) -> Path:
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"dataset.root={self.root} is a file, not a directory; point "
                            "dataset.root at a folder")
        found = self._find()
        why = "not downloaded: dataset.download=false"
        if found is None and self.download:
            why = self._try_download() or "the download left no usable files"
            why = f"download failed: {why}"
            found = self._find()
        if found is None:
            tried = " and ".join(str(d) for d in self.places())
            zipped = [d / f"{IMAGES}.zip" for d in self.places() if (d / f"{IMAGES}.zip").is_file()]
            hint = f"unzip {zipped[0]} where it is, or " if zipped else ""
            raise UserError(
                f"CelebA not found: looked for {IMAGES}/ with {', '.join(self._needs()[1:])} "
                f"beside it in {tried}; {why} (torchvision downloads from Google Drive, which "
                f"often refuses). To fix: {hint}get img_align_celeba.zip, {PARTITION} and "
                f"{ATTRIBUTES} from the CelebA site (mmlab.ie.cuhk.edu.hk/projects/CelebA.html), "
                f"unzip the images into {self.places()[0] / IMAGES} and put the lists in "
                f"{self.places()[0]}, or set dataset.root=PATH (or $VAE_DATA_DIR)")
        return found

    # -- reading -------------------------------------------------------------------------------
    def read(self) -> ImageData:
        folder = self.locate()
        names, parts = read_partition(folder / PARTITION)
        labels, classes = self._labels(folder, names)
        images = folder / IMAGES
        files, missing = stat_files(images, names)
        if missing:
            if self.bad_files == "error" or len(missing) == len(names):
                raise UserError(f"{len(missing):,} of the {len(names):,} images listed in "
                                f"{folder / PARTITION} are missing from {images} (e.g. "
                                f"{missing[0]}); unzip img_align_celeba.zip there again"
                                + ("" if len(missing) == len(names) else
                                   ", or set dataset.bad_files=skip to leave them out"))
            log.warning("%d of the %d images listed in %s are missing from %s (e.g. %s); they "
                        "are left out", len(missing), len(names), folder / PARTITION, images,
                        ", ".join(missing[:3]))
            keep = np.isin(np.asarray(names), np.asarray(missing), invert=True)
            parts, labels = parts[keep], labels[keep]
        dec = decode(images, files, self.prep, bad_files=self.bad_files, cache=self.cache,
                     cache_dir=self.cache_dir, workers=self.workers, verify=self.verify_cache,
                     name=self.name, meta={"partition": PARTITION})
        train_parts = (0, 1) if self.include_valid else (0,)
        out = []
        for split, wanted in (("train", train_parts), ("test", (2,))):
            rows = np.flatnonzero(np.isin(parts, wanted) & dec.ok)
            if len(rows) == 0:
                raise UserError(f"CelebA: the {split} split (partition {wanted}) has no image "
                                f"that decodes; check {folder / PARTITION} and {images}")
            y = torch.from_numpy(labels[rows].copy())
            x = Rows(dec.array, rows) if dec.path is not None else \
                torch.from_numpy(dec.array[rows])
            out += [x, y]
        log.info("CelebA: %s train + %s test images of %s, %s", f"{len(out[0]):,}",
                 f"{len(out[2]):,}", "x".join(map(str, dec.array.shape[1:])),
                 f"attributes {', '.join(classes)}" if classes else "unlabelled")
        return ImageData(self.name, *out, classes=classes)

    def _labels(self, folder: Path, names: list[str]) -> tuple[np.ndarray, list[str]]:
        """Labels aligned with ``names``: (N, A) 0/1 int64 of the chosen attributes, or (N,)
        zeros without attributes; and the attribute names."""
        if not self.attributes:
            return np.zeros(len(names), dtype=np.int64), []
        known, row_of, values = read_attributes(folder / ATTRIBUTES)
        wanted = list(known) if self.attributes == "all" else self.attributes
        _check_attributes(wanted, known)
        cols = [known.index(a) for a in wanted]
        absent = [n for n in names if n not in row_of]
        if absent:
            raise UserError(f"{folder / ATTRIBUTES} has no attributes for {len(absent)} images "
                            f"listed in {folder / PARTITION} (e.g. {absent[0]}); get both lists "
                            "again")
        rows = np.fromiter((row_of[n] for n in names), dtype=np.int64, count=len(names))
        return (values[np.ix_(rows, cols)] > 0).astype(np.int64), wanted


