"""Where image data sets are found, and how they are read into uint8 tensors.

Search order for the torchvision sets: ``dataset.root`` in torchvision's layout
(``<root>/MNIST/raw/...``, ``<root>/FashionMNIST/raw/...``, ``<root>/KMNIST/raw/...``,
``<root>/cifar-10-batches-py/...``); for Fashion-MNIST also Debian's
``/usr/share/datasets/fashion-mnist``; then torchvision's download into ``dataset.root``
(when ``dataset.download`` is true). If all fail, one message names every place tried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vae_train.data.cifar import TEST_BATCHES, TRAIN_BATCHES, read_cifar10
from vae_train.data.dsprites import load_dsprites
from vae_train.data.idx import read_idx
from vae_train.data.sines import make_sines, sine_classes
from vae_train.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from vae_train.data.synthetic import make_synthetic
from vae_train.errors import UserError, first_line

log = logging.getLogger(__name__)

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass
class ImageData:
    """A data set in memory: uint8 images (N, C, H, W) and int64 labels for both splits."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str] = field(default_factory=list)
    # Generated from known factors of variation (dsprites): each image's factor indices
    # (N, K) int64, and the grid they index (vae_train.disentangle.FactorGrid).
    train_factors: torch.Tensor | None = None
    test_factors: torch.Tensor | None = None
    factor_grid: object | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class MnistLike:
    title: str
    folder: str            # torchvision's folder name under the root
    tv_class: str          # torchvision.datasets class used for downloading
    classes: tuple
    extra_dirs: tuple = ()
    hint: str = ""


MNIST_LIKE = {
    "mnist": MnistLike("MNIST", "MNIST", "MNIST", tuple(str(i) for i in range(10))),
    "fashion_mnist": MnistLike(
        "Fashion-MNIST", "FashionMNIST", "FashionMNIST",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"),
        extra_dirs=(DEBIAN_FASHION,), hint="on Debian: apt-get install dataset-fashion-mnist; "),
    "kmnist": MnistLike("KMNIST", "KMNIST", "KMNIST",
                        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def _find_idx_dir(dirs: list[Path]) -> Path | None:
    """The first directory holding all four IDX files (plain or .gz)."""
    for d in dirs:
        if all(_idx_file(d, n) for pair in IDX_FILES.values() for n in pair):
            return d
    return None


def _idx_file(d: Path, name: str) -> Path | None:
    for cand in (d / name, d / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def _download(tv_class: str, root: Path) -> str | None:
    """Try torchvision's download into ``root``; return why it failed, or None."""
    import torchvision.datasets as tvd

    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            getattr(tvd, tv_class)(str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - any failure becomes one line for the user
        return first_line(e)
    return None


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise UserError(f"dataset.root={root} is a file, not a directory; "
                        "point dataset.root at a folder")


def load_mnist_like(name: str, root: Path, download: bool) -> ImageData:
    spec = MNIST_LIKE[name]
    _check_root(root)
    dirs = [root / spec.folder / "raw", root / spec.folder, *spec.extra_dirs]
    found = _find_idx_dir(dirs)
    why = "not downloaded: dataset.download=false"
    if found is None and download:
        log.info("%s not found locally; trying torchvision's download into %s", spec.title, root)
        why = _download(spec.tv_class, root) or "the download left no usable files"
        why = f"download failed: {why}"
        found = _find_idx_dir(dirs)
    if found is None:
        tried = ", ".join(str(d) for d in dirs)
        raise UserError(
            f"{spec.title} not found: looked in {tried}; {why}. "
            f"To fix: {spec.hint}put the four IDX files (.gz or plain) in {dirs[0]}, "
            f"or set dataset.root=PATH (or $VAE_DATA_DIR) to a folder holding {spec.folder}/raw/")
    log.info("reading %s from %s", spec.title, found)
    parts = {}
    for split, (img_name, lab_name) in IDX_FILES.items():
        x = read_idx(_idx_file(found, img_name), expect_dims=3)
        y = read_idx(_idx_file(found, lab_name), expect_dims=1).long()
        if len(x) != len(y):
            raise UserError(f"{found}: {split} split has {len(x)} images but {len(y)} labels")
        parts[split] = (x.unsqueeze(1), y)
    return ImageData(name, *parts["train"], *parts["test"], classes=list(spec.classes))


def load_cifar10(root: Path, download: bool) -> ImageData:
    _check_root(root)
    folder = root / "cifar-10-batches-py"
    names = TRAIN_BATCHES + TEST_BATCHES
    present = lambda: all((folder / n).is_file() for n in names)  # noqa: E731
    why = "not downloaded: dataset.download=false"
    if not present() and download:
        log.info("CIFAR-10 not found locally; trying torchvision's download into %s", root)
        why = _download("CIFAR10", root) or "the download left no usable files"
        why = f"download failed: {why}"
    if not present():
        raise UserError(
            f"CIFAR-10 not found: looked in {folder}; {why}. To fix: unpack "
            f"cifar-10-python.tar.gz into {root}, or set dataset.root=PATH (or $VAE_DATA_DIR)")
    log.info("reading CIFAR-10 from %s", folder)
    return ImageData("cifar10", *read_cifar10(folder, True), *read_cifar10(folder, False),
                     classes=list(CIFAR10_CLASSES))


def load_synthetic(n_train: int, n_test: int, size: int, channels: int, seed: int) -> ImageData:
    tx, ty = make_synthetic(n_train, seed, size, channels)
    ex, ey = make_synthetic(n_test, seed + 1, size, channels)
    return ImageData("synthetic", tx, ty, ex, ey, classes=list(SYNTHETIC_CLASSES))


def load_sines(cfg) -> ImageData:
    """Float sequences (N, 1, length, 1); label = number of sinusoids - 1."""
    spec = {"length": cfg.length, "noise": cfg.noise, "max_components": cfg.max_components}
    tx, ty = make_sines(int(cfg.num_train), int(cfg.generator_seed), **spec)
    ex, ey = make_sines(int(cfg.num_test), int(cfg.generator_seed) + 1, **spec)
    return ImageData("sines", tx, ty, ex, ey, classes=sine_classes(int(cfg.max_components)))


def load_image_data(cfg) -> ImageData:
    """Read the data set named by the ``dataset`` config node, truncated to the sizes asked."""
    name = cfg.name
    if name in MNIST_LIKE:
        data = load_mnist_like(name, Path(cfg.root).expanduser(), bool(cfg.download))
    elif name == "cifar10":
        data = load_cifar10(Path(cfg.root).expanduser(), bool(cfg.download))
    elif name == "synthetic":
        data = load_synthetic(int(cfg.num_train), int(cfg.num_test), int(cfg.image_size),
                              int(cfg.channels), int(cfg.generator_seed))
    elif name == "sines":
        data = load_sines(cfg)
    elif name == "dsprites":
        data = load_dsprites(cfg)
    else:
        raise UserError(f"dataset.name={name!r} is not known")
    for split, size in (("train", cfg.get("train_size")), ("test", cfg.get("test_size"))):
        if size is not None:
            x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
            if size > len(x):
                raise UserError(f"dataset.{split}_size={size} but {data.name} has only "
                                f"{len(x)} {split} images; use a smaller value or null for all")
            setattr(data, f"{split}_x", x[:size])
            setattr(data, f"{split}_y", y[:size])
            factors = getattr(data, f"{split}_factors")
            if factors is not None:
                setattr(data, f"{split}_factors", factors[:size])
    return data
