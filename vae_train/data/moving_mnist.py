"""``dataset=moving_mnist``: videos of objects bouncing in a square frame, generated offline
from an MNIST-format set already on disk (Srivastava et al. 2015 made it from MNIST digits).

Each sequence holds ``objects`` images of the source set (resized to ``object_size`` pixels),
each starting at a random position with a random direction at ``speed`` pixels per frame and
bouncing off the edges of the ``image_size`` x ``image_size`` frame; overlapping objects
combine by the pixel-wise maximum. Examples are uint8 videos (N, T, 1, H, W); the label of a
sequence is the class of its first object. The training sequences take their objects from the
source's training split (seed ``generator_seed``), the test sequences from its test split (seed
``generator_seed + 1``), so no source image is in both.

Generated sets are cached under ``$VAE_CACHE_DIR/moving_mnist/`` (else
``~/.cache/vae-train/moving_mnist/``), one ``.npz`` per setting keyed by every option and by
the source files' sizes and times, written atomically; a second load reads the cache, a
damaged cache is generated again with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vae_train.checks import BOOLEAN, integer, number, one_of
from vae_train.data.base import DataSet, ImageData
from vae_train.data.decode_cache import cache_root, make_room
from vae_train.data.torchvision_sets import IDX_FILES, FashionMNIST, KMNIST, MNIST
from vae_train.errors import UserError
from vae_train.files import atomic_write

log = logging.getLogger(__name__)

VERSION = 1      # bump when the generation changes: caches of older versions are not read
SOURCES = {"fashion_mnist": FashionMNIST, "mnist": MNIST, "kmnist": KMNIST}


def _idx(folder: Path, name: str) -> Path | None:
    """The IDX file ``name`` in ``folder``, plain or gzipped (None: neither)."""
    for p in (folder / name, folder / f"{name}.gz"):
        if p.is_file():
            return p
    return None


def bounce(n: int, frames: int, objects: int, room: int, speed: float,
           g: np.random.Generator) -> np.ndarray:
    """Top-left corners (n, objects, frames, 2) as integers in [0, room]: a random start and
    direction, ``speed`` pixels per frame, reflected at 0 and ``room``."""
    pos = g.uniform(0, room, size=(n, objects, 2))
    angle = g.uniform(0, 2 * math.pi, size=(n, objects))
    vel = speed * np.stack([np.sin(angle), np.cos(angle)], -1)
    out = np.empty((n, objects, frames, 2), dtype=np.int64)
    for t in range(frames):
        out[:, :, t] = np.rint(pos)
        pos = pos + vel
        for _ in range(2):                     # a step longer than the room reflects twice
            low, high = pos < 0, pos > room
            pos = np.where(low, -pos, np.where(high, 2 * room - pos, pos))
            vel = np.where(low | high, -vel, vel)
        pos = np.clip(pos, 0, room)
    return out


def make_moving(images: torch.Tensor, labels: torch.Tensor, n: int, frames: int,
                image_size: int, objects: int, object_size: int, speed: float, seed: int,
                progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 videos (n, frames, 1, image_size, image_size) of ``objects`` of ``images``
    ((M, 1, h, w) uint8) bouncing, and the label of each video's first object."""
    g = np.random.default_rng(seed)
    pick = g.integers(0, len(images), size=(n, objects))
    corners = bounce(n, frames, objects, image_size - object_size, speed, g)
    out = np.zeros((n, frames, image_size, image_size), dtype=np.uint8)
    chunk = 512
    bar = tqdm(total=n, desc="moving_mnist", unit="seq", disable=None if progress else True, leave=False)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        src = images[torch.from_numpy(pick[a:b].reshape(-1))]
        if src.shape[-1] != object_size or src.shape[-2] != object_size:
            src = F.interpolate(src.float(), size=(object_size, object_size), mode="bilinear",
                                antialias=True, align_corners=False)
            src = src.round().clamp(0, 255).to(torch.uint8)
        objs = src.numpy().reshape(b - a, objects, object_size, object_size)
        for i in range(b - a):
            for o in range(objects):
                for t in range(frames):
                    r, c = corners[a + i, o, t]
                    view = out[a + i, t, r:r + object_size, c:c + object_size]
                    np.maximum(view, objs[i, o], out=view)
        bar.update(b - a)
    bar.close()
    return torch.from_numpy(out).unsqueeze(2), labels[torch.from_numpy(pick[:, 0])].long()


class MovingMNIST(DataSet):
    """``dataset=moving_mnist``: ``num_train`` + ``num_test`` videos of ``frames`` frames of
    ``image_size`` x ``image_size``, ``objects`` images of ``source`` (found under ``root``,
    for Fashion-MNIST also in Debian's /usr/share/datasets/fashion-mnist) bouncing at
    ``speed`` pixels per frame; generated once per setting and cached."""

    checks = {"num_train": integer(2, what="an integer > 1"), "num_test": integer(1),
              "frames": integer(2, what="an integer >= 2 (frames per sequence)"),
              "image_size": integer(8, what="an integer >= 8 (pixels)"),
              "objects": integer(1), "object_size": integer(4, what="an integer >= 4 (pixels)"),
              "speed": number(0, what="a number >= 0 (pixels per frame)"),
              "generator_seed": integer(0), "source": one_of(*SOURCES), "cache": BOOLEAN}

    def __init__(self, root: str = "data", source: str = "fashion_mnist", num_train: int = 10000,
                 num_test: int = 1000, frames: int = 20, image_size: int = 64, objects: int = 2,
                 object_size: int = 28, speed: float = 3.0, generator_seed: int = 0,
                 cache: bool = True, **common):
        super().__init__(**common)
        self.root, self.source = Path(str(root)).expanduser(), source
        self.num_train, self.num_test = int(num_train), int(num_test)
        self.frames, self.image_size = int(frames), int(image_size)
        self.objects, self.object_size = int(objects), int(object_size)
        self.speed, self.generator_seed = float(speed), int(generator_seed)
        self.cache = bool(cache)
        if self.object_size > self.image_size:
            raise UserError(f"dataset.object_size={self.object_size} is larger than the frame "
                            f"(dataset.image_size={self.image_size}); use a smaller object_size "
                            "or a larger image_size")

    def generated_bytes(self) -> int:
        return (self.num_train + self.num_test) * self.frames * self.image_size ** 2

    # -- the source set ---------------------------------------------------------------------
    def _source_set(self):
        return SOURCES[self.source](root=str(self.root), download=False, name=self.source)

    def read_source(self) -> ImageData:
        try:
            return self._source_set().read()
        except UserError as e:
            raise UserError(f"dataset=moving_mnist (dataset.source={self.source}): {e}") from None

    def _source_files(self) -> list[tuple[str, int, int]]:
        """(path, size, mtime) of the source's IDX files, for the cache key ([] when they are
        not all found: the read then says where it looked)."""
        cls = SOURCES[self.source]
        for d in (self.root / cls.folder / "raw", self.root / cls.folder, *cls.extra_dirs):
            found = [_idx(Path(d), name) for pair in IDX_FILES.values() for name in pair]
            if all(found):
                return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in found]
        return []

    # -- the cache ----------------------------------------------------------------------------
    def settings(self) -> dict:
        return {"version": VERSION, "source": self.source, "num_train": self.num_train,
                "num_test": self.num_test, "frames": self.frames,
                "image_size": self.image_size, "objects": self.objects,
                "object_size": self.object_size, "speed": self.speed,
                "generator_seed": self.generator_seed}

    def cache_path(self, files) -> Path:
        key = json.dumps({**self.settings(), "files": files}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return cache_root() / "moving_mnist" / f"{self.source}_{digest}.npz"

    def _read_cache(self, path: Path) -> dict | None:
        want = {"train_x": (self.num_train, self.frames, 1, self.image_size, self.image_size),
                "test_x": (self.num_test, self.frames, 1, self.image_size, self.image_size),
                "train_y": (self.num_train,), "test_y": (self.num_test,)}
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in want}
        except Exception as e:  # noqa: BLE001 - a damaged cache fails in many ways
            log.warning("moving_mnist cache %s is unreadable (%s); generating it again", path,
                        type(e).__name__)
            return None
        for k, shape in want.items():
            if arrays[k].shape != shape:
                log.warning("moving_mnist cache %s holds %s of shape %s, not %s; generating "
                            "it again", path, k, arrays[k].shape, shape)
                return None
        return arrays

    def read(self) -> ImageData:
        files = self._source_files() if self.cache else []
        path = self.cache_path(files) if files else None
        if path is not None and path.is_file():
            arrays = self._read_cache(path)
            if arrays is not None:
                log.info("reading moving_mnist from the cache %s", path)
                src_classes = list(SOURCES[self.source].classes)
                return ImageData(self.name, torch.from_numpy(arrays["train_x"]),
                                 torch.from_numpy(arrays["train_y"]).long(),
                                 torch.from_numpy(arrays["test_x"]),
                                 torch.from_numpy(arrays["test_y"]).long(), classes=src_classes)
        src = self.read_source()
        log.info("generating moving_mnist from %s: %d + %d sequences of %d frames", self.source,
                 self.num_train, self.num_test, self.frames)
        common = (self.frames, self.image_size, self.objects, self.object_size, self.speed)
        tx, ty = make_moving(src.train_x, src.train_y, self.num_train, *common,
                             seed=self.generator_seed)
        ex, ey = make_moving(src.test_x, src.test_y, self.num_test, *common,
                             seed=self.generator_seed + 1)
        if path is not None and make_room(path, "moving_mnist cache", log):
            try:
                atomic_write(path, lambda f: np.savez(f, train_x=tx.numpy(), train_y=ty.numpy(),
                                                      test_x=ex.numpy(), test_y=ey.numpy()))
                log.info("cached moving_mnist at %s", path)
            except (OSError, UserError) as e:
                log.warning("cannot write the moving_mnist cache %s (%s); the sequences stay in "
                            "memory only", path, e)
        return ImageData(self.name, tx, ty, ex, ey, classes=list(src.classes))
