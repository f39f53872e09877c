"""dSprites, generated offline: 64x64 binary images of a square, an ellipse and a heart.

The factor grid is that of Matthey et al. (2017): 3 shapes x 6 scales (0.5 to 1, linearly) x
40 orientations (0 to 2 pi, both ends included, as in the original) x 32 x 32 positions (0 to
1 in each axis) = 737,280 images, indexed in mixed radix with pos_y fastest (index =
(((shape * 6 + scale) * 40 + orientation) * 32 + pos_x) * 32 + pos_y). The renderer is ours:

* a sprite is drawn around its centre from an implicit inside test (square: |u|, |v| <= h;
  ellipse: (u/a)^2 + (v/b)^2 <= 1; heart: (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0), rotated
  counter-clockwise by the orientation and scaled by the scale;
* each pixel is supersampled 4 x 4 and set where at least half of its samples are inside;
* the centre moves from pixel 12.625 to 51.375 in x (rightwards) and y (downwards), a step of
  1.25 pixels, so a sprite at scale 1 stays inside the frame at every orientation.

A position step is 5 samples, so a moved sprite is the same sample mask shifted: each
(shape, scale, orientation) is rasterised once per sub-pixel phase (4 x 4 phases) into a small
patch and an image is that patch pasted at an integer offset. :func:`render` draws any factor
indices this way (microseconds an image); the whole grid is rendered once and cached as
``<root>/dsprites/dsprites_v1.npz`` (``np.packbits`` of the images along each row, about 4 MB
compressed), written atomically.
"""

from __future__ import annotations

import functools
import logging
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from vae_train.checks import BOOLEAN, integer, optional
from vae_train.data.base import DataSet, ImageData
from vae_train.data.decode_cache import make_room
from vae_train.data.factors import FactorGrid
from vae_train.errors import UserError
from vae_train.files import atomic_write

log = logging.getLogger(__name__)

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
NUM_IMAGES = math.prod(FACTOR_SIZES)  # 737,280
SIDE = 64
CACHE_NAME = "dsprites_v1.npz"
VERSION = 1              # bump when the rendering changes: an older cache is then regenerated

SS = 4                   # samples per pixel along each axis
STEP = 5                 # samples between neighbouring positions (1.25 pixels)
START = 50               # the centre at position 0 is sample START + 0.5 (pixel 12.625)
HALF = 14                # a patch spans pixels -HALF..HALF around the centre's pixel
# Sprite sizes at scale 1, in pixels: square half-side, ellipse semi-axes, heart radius.
SQUARE_HALF = 8.5
ELLIPSE_AXES = (11.5, 5.75)
HEART_RADIUS = 10.0


def factor_values() -> list[np.ndarray]:
    """The value of every index of every factor (shape: 0, 1, 2 for the three shapes)."""
    return [np.arange(3, dtype=np.float64), np.linspace(0.5, 1.0, 6),
            np.linspace(0.0, 2 * math.pi, 40), np.linspace(0.0, 1.0, 32),
            np.linspace(0.0, 1.0, 32)]


def factors_to_index(factors) -> np.ndarray:
    """(N, 5) factor indices -> (N,) grid indices (mixed radix, pos_y fastest)."""
    f = np.asarray(factors, dtype=np.int64)
    idx = np.zeros(len(f), dtype=np.int64)
    for k, size in enumerate(FACTOR_SIZES):
        idx = idx * size + f[:, k]
    return idx


def index_to_factors(index) -> np.ndarray:
    """(N,) grid indices -> (N, 5) factor indices."""
    rest = np.asarray(index, dtype=np.int64).copy()
    out = np.empty((len(rest), len(FACTOR_SIZES)), dtype=np.int64)
    for k in reversed(range(len(FACTOR_SIZES))):
        out[:, k] = rest % FACTOR_SIZES[k]
        rest //= FACTOR_SIZES[k]
    return out


@functools.lru_cache(maxsize=1)
def _heart_frame() -> tuple[float, float, float]:
    """Centre (x, y) and radius of the implicit heart's bounding box, measured once (on first
    use, not at import: every command imports this module)."""
    g = np.linspace(-1.5, 1.5, 3001)
    x, y = np.meshgrid(g, g)
    inside = (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    ys, xs = y[inside], x[inside]
    cy = (ys.max() + ys.min()) / 2
    return 0.0, float(cy), float(max(xs.max(), (ys.max() - ys.min()) / 2))


def inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of an unrotated sprite at scale 1; (u, v) in pixels from its centre, v up."""
    if shape == 0:
        return (np.abs(u) <= SQUARE_HALF) & (np.abs(v) <= SQUARE_HALF)
    if shape == 1:
        a, b = ELLIPSE_AXES
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if shape == 2:
        _, centre_y, extent = _heart_frame()
        s = extent / HEART_RADIUS
        x, y = u * s, v * s + centre_y
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    raise ValueError(f"shape index {shape} is not 0, 1 or 2")


def sprite_samples(shape: int, scale: float, angle: float) -> np.ndarray:
    """The sample mask around the centre: (T, T) bool, T = 2 * (4 * HALF + 4) + 1 samples at
    offsets t / 4 pixels, t = -(4 * HALF + 4) .. 4 * HALF + 4; rows go down the image."""
    r = SS * HALF + SS
    t = np.arange(-r, r + 1) / SS
    dy, dx = np.meshgrid(t, t, indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    # image (dx right, dy down) -> sprite frame (u right, v up), rotated back by the angle
    u = (c * dx - s * dy) / scale
    v = (-s * dx - c * dy) / scale
    return inside(shape, u, v)


def phase_patches(shape: int, scale: float, angle: float) -> np.ndarray:
    """(4, 4, P, P) binary patches, P = 2 * HALF + 1: for sub-pixel phases (ry, rx), patch
    pixel m (m = -HALF..HALF) covers samples 4m - r .. 4m - r + 3 around the centre."""
    m = sprite_samples(shape, scale, angle).astype(np.float32)
    r0 = SS * HALF + SS                      # index of offset t = 0
    p = 2 * HALF + 1
    out = np.empty((SS, SS, p, p), dtype=np.uint8)
    for ry in range(SS):
        a = r0 - SS * HALF - ry
        rows = m[a:a + SS * p].reshape(p, SS, -1).mean(1)
        for rx in range(SS):
            b = r0 - SS * HALF - rx
            cov = rows[:, b:b + SS * p].reshape(p, p, SS).mean(2)
            out[ry, rx] = cov >= 0.5
    return out


def _placement(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position indices -> (integer pixel offset q of the patch centre, sub-pixel phase r)."""
    s = START + STEP * np.asarray(pos, dtype=np.int64)
    return s // SS, s % SS


@functools.cache
def _patches(shape: int, scale: int, orientation: int) -> np.ndarray:
    vals = factor_values()
    return phase_patches(shape, float(vals[1][scale]), float(vals[2][orientation]))


def render(factors) -> np.ndarray:
    """Images for (N, 5) factor indices: (N, 64, 64) uint8 of 0 and 1."""
    f = np.asarray(factors, dtype=np.int64).reshape(-1, len(FACTOR_SIZES))
    bad = (f < 0) | (f >= np.asarray(FACTOR_SIZES))
    if bad.any():
        raise ValueError(f"factor indices out of range: {f[bad.any(1)][0].tolist()} "
                         f"(sizes {FACTOR_SIZES})")
    pad = HALF + 1
    canvas = np.zeros((len(f), SIDE + 2 * pad, SIDE + 2 * pad), dtype=np.uint8)
    qx, rx = _placement(f[:, 3])
    qy, ry = _placement(f[:, 4])
    p = 2 * HALF + 1
    for i in range(len(f)):
        patch = _patches(int(f[i, 0]), int(f[i, 1]), int(f[i, 2]))[ry[i], rx[i]]
        y0, x0 = qy[i] - HALF + pad, qx[i] - HALF + pad
        canvas[i, y0:y0 + p, x0:x0 + p] = patch
    return canvas[:, pad:pad + SIDE, pad:pad + SIDE]


def render_combo(shape: int, scale: int, orientation: int) -> np.ndarray:
    """All 32 x 32 positions of one (shape, scale, orientation): (1024, 64, 64) 0/1 uint8 in
    grid order (pos_x major, pos_y minor)."""
    patches = _patches(shape, scale, orientation)
    pad = HALF + 1
    p = 2 * HALF + 1
    n = FACTOR_SIZES[3]
    q, r = _placement(np.arange(n))
    canvas = np.zeros((n, n, SIDE + 2 * pad, SIDE + 2 * pad), dtype=np.uint8)
    for ix in range(n):
        x0 = q[ix] - HALF + pad
        for iy in range(n):
            y0 = q[iy] - HALF + pad
            canvas[ix, iy, y0:y0 + p, x0:x0 + p] = patches[r[iy], r[ix]]
    return canvas[:, :, pad:pad + SIDE, pad:pad + SIDE].reshape(n * n, SIDE, SIDE)


def render_grid(progress: bool = True) -> np.ndarray:
    """The whole grid, packed: (737280, 64, 8) uint8, ``np.packbits`` along each row."""
    from tqdm.auto import tqdm

    out = np.empty((NUM_IMAGES, SIDE, SIDE // 8), dtype=np.uint8)
    per = FACTOR_SIZES[3] * FACTOR_SIZES[4]
    combos = [(a, b, c) for a in range(FACTOR_SIZES[0]) for b in range(FACTOR_SIZES[1])
              for c in range(FACTOR_SIZES[2])]
    for n, combo in enumerate(tqdm(combos, desc="dSprites", unit="sprite", leave=False,
                                   disable=None if progress else True)):
        out[n * per:(n + 1) * per] = np.packbits(render_combo(*combo), axis=-1)
    _patches.cache_clear()
    return out


# -- the data set ------------------------------------------------------------------------------
def split_indices(num_train: int | None, num_test: int | None, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices of the train and test subsets: disjoint, drawn at random with ``seed``.
    ``num_test=None``: 10% of the grid; ``num_train=None``: every grid point not in test."""
    n_test = round(0.1 * NUM_IMAGES) if num_test is None else num_test
    n_train = NUM_IMAGES - n_test if num_train is None else num_train
    if n_train + n_test > NUM_IMAGES:
        raise UserError(f"dataset.num_train={num_train} and dataset.num_test={num_test} ask for "
                        f"{n_train + n_test:,} images but the dSprites grid has {NUM_IMAGES:,}; "
                        "lower them (null takes what is left)")
    perm = np.random.default_rng(int(seed)).permutation(NUM_IMAGES)
    return perm[n_test:n_test + n_train], perm[:n_test]


def cache_path(root: str | Path) -> Path:
    return Path(root).expanduser() / "dsprites" / CACHE_NAME


class _NotThisCache(ValueError):
    """A cache file that reads but is not this version's grid (the reason is the message)."""


def _member(z: zipfile.ZipFile, name: str, shape: tuple | None = None,
            dtype: np.dtype | None = None, max_items: int = 64) -> np.ndarray:
    """Array ``name`` of the cache's zip, its ``.npy`` header checked before its data are read
    (the shape and dtype when given, else at most ``max_items`` numbers): a damaged header
    claiming a huge array is refused, not allocated."""
    with z.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise _NotThisCache(f"of an unknown format ({name} has .npy version {version})")
        if got_dtype.hasobject:
            raise _NotThisCache(f"of another layout ({name} holds Python objects)")
        if shape is not None and (tuple(got_shape) != shape or got_dtype != dtype):
            raise _NotThisCache(f"of another size ({name} of shape {tuple(got_shape)} "
                                f"{got_dtype}, expected {shape} {np.dtype(dtype)})")
        if shape is None and math.prod(got_shape) > max_items:
            raise _NotThisCache(f"of another layout ({name} of shape {tuple(got_shape)})")
    with z.open(f"{name}.npy") as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_cache(path: Path) -> np.ndarray:
    """The packed grid from a cache file; ValueError saying why when it is not a good one
    (whatever is wrong with it: truncated, overwritten, another format, damaged inside)."""
    want = (NUM_IMAGES, SIDE, SIDE // 8)
    try:
        with zipfile.ZipFile(path) as z:
            version = np.asarray(_member(z, "version"))
            sizes = np.asarray(_member(z, "factor_sizes"))
            if version.shape != () or sizes.ndim != 1 or not (
                    np.issubdtype(version.dtype, np.integer)
                    and np.issubdtype(sizes.dtype, np.integer)):
                raise _NotThisCache(f"of another layout (version {version.tolist()!r}, "
                                    f"factor sizes {sizes.tolist()!r})")
            if int(version) != VERSION or tuple(int(s) for s in sizes) != FACTOR_SIZES:
                raise _NotThisCache(f"written by another version (version {int(version)}, "
                                    f"factor sizes {tuple(int(s) for s in sizes)})")
            images = _member(z, "images", want, np.dtype(np.uint8))
    except _NotThisCache:
        raise
    except Exception as e:  # noqa: BLE001 - damage fails in many ways: each is "unreadable"
        detail = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"unreadable ({type(e).__name__}: {detail})") from None
    if images.shape != want or images.dtype != np.uint8:
        raise _NotThisCache(f"of another size (images of shape {images.shape} {images.dtype})")
    return images


def _write_cache(path: Path, images: np.ndarray) -> None:
    values = factor_values()

    def write(f):
        np.savez_compressed(f, images=images, version=np.int64(VERSION),
                            factor_sizes=np.asarray(FACTOR_SIZES, dtype=np.int64),
                            factor_names=np.asarray(FACTOR_NAMES), shapes=np.asarray(SHAPES),
                            **{f"values_{n}": v for n, v in zip(FACTOR_NAMES, values)})

    try:
        atomic_write(path, write)
    except (OSError, UserError) as e:
        why = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
        raise UserError(f"dataset.root: cannot write the dSprites cache {path} "
                        f"({why}); set dataset.root=PATH (or $VAE_DATA_DIR) to a "
                        "writable folder, or dataset.cache=false to render the images in memory"
                        ) from None


def load_grid(root: str | Path, progress: bool = True) -> np.ndarray:
    """The packed grid (737280, 64, 8): read from the cache, or rendered and cached (again,
    with a warning saying why, when the cache is damaged, stale or not a file at all; it is
    replaced atomically)."""
    path = cache_path(root)
    if path.parent.parent.exists() and not path.parent.parent.is_dir():
        raise UserError(f"dataset.root={path.parent.parent} is a file, not a directory; "
                        "point dataset.root at a folder")
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"dataset.root={path.parent.parent}: {path.parent} is a file, not a "
                        "folder; move it away (the dSprites cache is written in that folder)")
    if path.is_file():
        try:
            images = _read_cache(path)
            log.info("reading dSprites from %s", path)
            return images
        except ValueError as why:
            log.warning("dSprites cache %s is %s; rendering it again", path, why)
    writable = make_room(path, "dSprites cache", log)
    log.info("rendering dSprites (%s images)%s", f"{NUM_IMAGES:,}",
             f" into {path}" if writable else "")
    images = render_grid(progress)
    if writable:
        _write_cache(path, images)
    return images


def unpack(packed: np.ndarray) -> torch.Tensor:
    """Packed rows (N, 64, 8) -> uint8 images (N, 1, 64, 64) of 0 and 255."""
    return torch.from_numpy(np.unpackbits(packed, axis=-1) * np.uint8(255)).unsqueeze(1)


def images_of(factors) -> torch.Tensor:
    """Rendered images for (N, 5) factor indices as uint8 (N, 1, 64, 64) of 0 and 255."""
    return torch.from_numpy(render(factors) * np.uint8(255)).unsqueeze(1)


class DSprites(DataSet):
    """``dataset=dsprites``: disjoint random subsets of the grid for training and test (labels:
    the shape; every image's factor indices kept), read from the cache under ``root`` or, with
    ``cache=false``, rendered in memory."""

    checks = {"num_train": optional(integer(2), "null (all; see docs/data.md) or an integer >= 2"),
              "num_test": optional(integer(1), "null (all; see docs/data.md) or an integer >= 1"),
              "generator_seed": integer(0), "cache": BOOLEAN}

    def __init__(self, root: str, num_train: int | None = 100000, num_test: int | None = 10000,
                 generator_seed: int = 0, cache: bool = True, **common):
        super().__init__(**common)
        self.root = str(root)
        self.num_train, self.num_test = num_train, num_test
        self.generator_seed, self.cache = int(generator_seed), bool(cache)

    def read(self) -> ImageData:
        train_idx, test_idx = split_indices(self.num_train, self.num_test, self.generator_seed)
        if self.cache:
            grid = load_grid(self.root)
            train_x, test_x = unpack(grid[train_idx]), unpack(grid[test_idx])
            del grid
        else:
            train_x = images_of(index_to_factors(train_idx))
            test_x = images_of(index_to_factors(test_idx))
        train_f = torch.from_numpy(index_to_factors(train_idx))
        test_f = torch.from_numpy(index_to_factors(test_idx))
        ground = FactorGrid(names=list(FACTOR_NAMES), sizes=list(FACTOR_SIZES),
                            values=[v.tolist() for v in factor_values()], render=images_of,
                            label_factor=0)
        return ImageData(self.name, train_x, train_f[:, 0].clone(), test_x,
                         test_f[:, 0].clone(), classes=list(SHAPES), train_factors=train_f,
                         test_factors=test_f, factor_grid=ground)
