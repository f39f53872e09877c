"""The data sets torchvision knows, read from its on-disk layout into uint8 tensors.

Search order: ``dataset.root`` in torchvision's layout (``<root>/MNIST/raw/...``,
``<root>/FashionMNIST/raw/...``, ``<root>/KMNIST/raw/...``, ``<root>/cifar-10-batches-py/...``,
``<root>/cifar-100-python/...``, ``<root>/{train,test,extra}_32x32.mat`` for SVHN, also under
``<root>/svhn/``); for Fashion-MNIST also Debian's ``/usr/share/datasets/fashion-mnist``; then
torchvision's download into ``dataset.root`` (when ``dataset.download`` is true). If all fail,
one message names every place tried.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vae_train.checks import BOOLEAN, Rule, one_of
from vae_train.data.array_cache import cached_arrays
from vae_train.data.base import DataSet, ImageData
from vae_train.data.cifar import (CIFAR100_FILES, CIFAR100_LABELS, TEST_BATCHES, TRAIN_BATCHES,
                                  read_cifar10, read_cifar100, read_cifar100_names)
from vae_train.data.svhn import SVHN_CLASSES, read_svhn, require_scipy, svhn_file
from vae_train.data.idx import read_idx
from vae_train.errors import UserError, first_line

log = logging.getLogger(__name__)

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_VERSION = 1     # of the cached parse of the four files (vae_train.data.array_cache)


class TorchvisionSet(DataSet):
    """A set read from torchvision's layout under ``root`` (downloaded there if missing and
    ``download`` is true)."""

    title: str = ""        # the set's name in messages
    tv_class: str = ""     # the torchvision.datasets class that downloads it

    def __init__(self, root: str, download: bool = True, **common):
        super().__init__(**common)
        self.root = Path(str(root)).expanduser()
        self.download = bool(download)

    def check_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"dataset.root={self.root} is a file, not a directory; "
                            "point dataset.root at a folder")

    def try_download(self) -> str:
        """torchvision's download into ``root``; why it failed ('' if it did not)."""
        import torchvision.datasets as tvd

        log.info("%s not found locally; trying torchvision's download into %s", self.title,
                 self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for kwargs in self.download_splits():
                getattr(tvd, self.tv_class)(str(self.root), download=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure becomes one line for the user
            return first_line(e)
        return ""

    def download_splits(self) -> list[dict]:
        """The keyword arguments of one torchvision constructor call per split to download."""
        return [{"train": True}, {"train": False}]

    def find_or_download(self, present) -> str:
        """``present()`` is true now, or after torchvision's download; else why not (the end
        of the "not found" line)."""
        if present():
            return ""
        why = "not downloaded: dataset.download=false"
        if self.download:
            why = f"download failed: {self.try_download() or 'the download left no usable files'}"
        return "" if present() else why


class MnistLike(TorchvisionSet):
    """28x28 grey images in four IDX files (plain or .gz), ten classes. The parsed arrays are
    cached (``cache``, in ``cache_dir``; :mod:`vae_train.data.array_cache`): a later run reads
    them back instead of inflating and parsing the files, until a file changes."""

    folder: str = ""                   # torchvision's folder name under the root
    classes: tuple = ()
    extra_dirs: tuple = ()             # other places the four files may be
    hint: str = ""                     # how to get them, for the message when they are not found
    checks = {"cache": BOOLEAN,
              "cache_dir": Rule(lambda v: v is None or (isinstance(v, str) and v != ""),
                                "null (the default cache folder) or a folder path")}

    def __init__(self, root: str, download: bool = True, cache: bool = True,
                 cache_dir: str | None = None, **common):
        super().__init__(root, download, **common)
        self.cache, self.cache_dir = bool(cache), cache_dir

    def _parse(self, found: Path) -> dict:
        """The four IDX files of ``found`` as uint8 arrays: ``{split}_x`` (N, H, W) and
        ``{split}_y`` (N,), for the splits train and test."""
        out = {}
        for split, (img_name, lab_name) in IDX_FILES.items():
            out[f"{split}_x"] = read_idx(_idx_file(found, img_name), expect_dims=3).numpy()
            out[f"{split}_y"] = read_idx(_idx_file(found, lab_name), expect_dims=1).numpy()
        return out

    def _find(self, dirs: list[Path]) -> Path | None:
        """The first directory holding all four IDX files (plain or .gz)."""
        for d in dirs:
            if all(_idx_file(d, n) for pair in IDX_FILES.values() for n in pair):
                return d
        return None

    def read(self) -> ImageData:
        self.check_root()
        dirs = [self.root / self.folder / "raw", self.root / self.folder, *self.extra_dirs]
        found = self._find(dirs)
        why = "not downloaded: dataset.download=false"
        if found is None and self.download:
            why = self.try_download() or "the download left no usable files"
            why = f"download failed: {why}"
            found = self._find(dirs)
        if found is None:
            tried = ", ".join(str(d) for d in dirs)
            raise UserError(
                f"{self.title} not found: looked in {tried}; {why}. "
                f"To fix: {self.hint}put the four IDX files (.gz or plain) in {dirs[0]}, "
                f"or set dataset.root=PATH (or $VAE_DATA_DIR) to a folder holding "
                f"{self.folder}/raw/")
        log.info("reading %s from %s", self.title, found)
        sources = [_idx_file(found, n) for pair in IDX_FILES.values() for n in pair]
        arrays = cached_arrays(self.title, sources, lambda: self._parse(found),
                               names=tuple(f"{s}_{v}" for s in IDX_FILES for v in "xy"),
                               cache=self.cache, cache_dir=self.cache_dir, version=IDX_VERSION)
        parts, files = {}, {}
        k = len(self.classes)
        for split, (img_name, lab_name) in IDX_FILES.items():
            img_path, lab_path = _idx_file(found, img_name), _idx_file(found, lab_name)
            x = torch.from_numpy(arrays[f"{split}_x"])
            if x.dim() != 3:
                raise UserError(f"IDX file {img_path} has {x.dim()} dimensions, expected 3")
            n, h, w = x.shape
            if n == 0 or h == 0 or w == 0:
                raise UserError(f"IDX file {img_path} holds {n} images of {h}x{w} pixels; a "
                                f"{split} split needs at least one image of at least 1x1: "
                                f"the file is damaged, get {self.title} again")
            y = torch.from_numpy(arrays[f"{split}_y"]).long()
            if len(x) != len(y):
                raise UserError(f"the {split} split of {self.title} has {len(x):,} images in "
                                f"{img_path} but {len(y):,} labels in {lab_path}; one label per "
                                f"image: a file is damaged or from another set, get "
                                f"{self.title} again")
            bad = y >= k                              # uint8 on disk: never negative
            if bool(bad.any()):
                i = int(torch.nonzero(bad)[0])
                raise UserError(f"IDX file {lab_path} holds {int(bad.sum()):,} labels outside "
                                f"0..{k - 1} for {self.title}'s {k} classes (the first: "
                                f"{int(y[i])}, at position {i}); the file is damaged or from "
                                f"another set, get {self.title} again")
            parts[split], files[split] = (x.unsqueeze(1), y), img_path
        (train, _), (test, _) = parts["train"], parts["test"]
        if train.shape[2:] != test.shape[2:]:
            raise UserError(f"{self.title}'s test images in {files['test']} are "
                            f"{test.shape[2]}x{test.shape[3]} pixels but its training images "
                            f"in {files['train']} are {train.shape[2]}x{train.shape[3]}; both "
                            f"splits must have one size: get {self.title} again")
        return ImageData(self.name, *parts["train"], *parts["test"], classes=list(self.classes))


def _idx_file(d: Path, name: str) -> Path | None:
    for cand in (d / name, d / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


class MNIST(MnistLike):
    title = folder = tv_class = "MNIST"
    classes = tuple(str(i) for i in range(10))


class FashionMNIST(MnistLike):
    title, folder, tv_class = "Fashion-MNIST", "FashionMNIST", "FashionMNIST"
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
    extra_dirs = (DEBIAN_FASHION,)
    hint = "on Debian: apt-get install dataset-fashion-mnist; "


class KMNIST(MnistLike):
    title = folder = tv_class = "KMNIST"
    classes = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")


class CIFAR10(TorchvisionSet):
    """32x32 colour images in the python pickles of ``cifar-10-batches-py``, ten classes."""

    title, tv_class = "CIFAR-10", "CIFAR10"
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")

    def read(self) -> ImageData:
        self.check_root()
        folder = self.root / "cifar-10-batches-py"
        names = TRAIN_BATCHES + TEST_BATCHES
        why = self.find_or_download(lambda: all((folder / n).is_file() for n in names))
        if why:
            raise UserError(
                f"CIFAR-10 not found: looked in {folder}; {why}. To fix: unpack "
                f"cifar-10-python.tar.gz into {self.root}, or set dataset.root=PATH (or "
                "$VAE_DATA_DIR)")
        log.info("reading CIFAR-10 from %s", folder)
        return ImageData(self.name, *read_cifar10(folder, True), *read_cifar10(folder, False),
                         classes=list(self.classes))


class CIFAR100(TorchvisionSet):
    """32x32 colour images in the python pickles of ``cifar-100-python`` (``train``, ``test``,
    ``meta``), labelled with the 100 fine classes or the 20 coarse superclasses
    (``labels``)."""

    title, tv_class = "CIFAR-100", "CIFAR100"
    checks = {"labels": one_of(*CIFAR100_LABELS, what="fine (100 classes) or coarse (20)")}

    def __init__(self, root: str, download: bool = True, labels: str = "fine", **common):
        super().__init__(root, download, **common)
        self.labels = labels

    def read(self) -> ImageData:
        self.check_root()
        folder = self.root / "cifar-100-python"
        why = self.find_or_download(lambda: all((folder / n).is_file() for n in CIFAR100_FILES))
        if why:
            raise UserError(
                f"CIFAR-100 not found: looked in {folder} (for {', '.join(CIFAR100_FILES)}); "
                f"{why}. To fix: unpack cifar-100-python.tar.gz into {self.root}, or set "
                "dataset.root=PATH (or $VAE_DATA_DIR)")
        log.info("reading CIFAR-100 (%s labels) from %s", self.labels, folder)
        classes = read_cifar100_names(folder, self.labels)
        return ImageData(self.name, *read_cifar100(folder, True, self.labels),
                         *read_cifar100(folder, False, self.labels), classes=classes)


class SVHN(TorchvisionSet):
    """The Street View House Numbers, cropped digits: 32x32 colour images in the MATLAB files
    ``train_32x32.mat`` and ``test_32x32.mat`` (and ``extra_32x32.mat``, 531,131 more training
    images, with ``extra``), in ``root`` or ``root/svhn``; label 10 in the files is digit 0.
    Reading them needs scipy (the ``svhn`` extra)."""

    title, tv_class = "SVHN", "SVHN"
    checks = {"extra": BOOLEAN}

    def __init__(self, root: str, download: bool = True, extra: bool = False, **common):
        super().__init__(root, download, **common)
        self.extra = extra

    def splits(self) -> list[str]:
        return ["train", "test", *(["extra"] if self.extra else [])]

    def download_splits(self) -> list[dict]:
        return [{"split": s} for s in self.splits()]

    def _find(self, dirs: list[Path]) -> Path | None:
        for d in dirs:
            if all(svhn_file(d, s).is_file() for s in self.splits()):
                return d
        return None

    def read(self) -> ImageData:
        require_scipy()
        self.check_root()
        dirs = [self.root, self.root / "svhn"]
        why = self.find_or_download(lambda: self._find(dirs) is not None)
        if why:
            names = ", ".join(svhn_file(Path(), s).name for s in self.splits())
            raise UserError(
                f"SVHN not found: looked in {dirs[0]} and {dirs[1]} (for {names}); {why}. To "
                f"fix: put the files from http://ufldl.stanford.edu/housenumbers/ in "
                f"{self.root}, or set dataset.root=PATH (or $VAE_DATA_DIR)")
        found = self._find(dirs)
        log.info("reading SVHN (%s) from %s", ", ".join(self.splits()), found)
        train_parts = [read_svhn(svhn_file(found, s)) for s in self.splits() if s != "test"]
        train_x = torch.cat([p[0] for p in train_parts])
        train_y = torch.cat([p[1] for p in train_parts])
        return ImageData(self.name, train_x, train_y, *read_svhn(svhn_file(found, "test")),
                         classes=list(SVHN_CLASSES))
