"""A generated, labelled, image-like data set with structure a VAE can learn.

Ten classes of simple shapes (disk, ring, square, frame, triangle, plus, cross, bar, diamond,
two dots), each drawn at a random position, size, small rotation and brightness, anti-aliased
by 2x supersampling. Colour images (channels=3) get a random colour per image. Everything is
seeded, so the same settings always give the same images.
"""

from __future__ import annotations

import math

import torch

from vae_train.checks import integer, one_of
from vae_train.data.base import DataSet, ImageData

CLASSES = ["disk", "ring", "square", "frame", "triangle", "plus", "cross", "bar", "diamond", "dots"]


def _shape_masks(px: torch.Tensor, py: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    r = torch.sqrt(px ** 2 + py ** 2)
    ax, ay = px.abs(), py.abs()
    box = torch.maximum(ax, ay)
    masks = torch.stack([
        r < 0.9,                                                    # disk
        (r < 0.95) & (r > 0.6),                                     # ring
        box < 0.75,                                                 # square
        (box < 0.9) & (box > 0.6),                                  # frame
        (py < 0.65) & (py > 0.75 * ax * 2 - 0.85),                  # triangle (apex down)
        ((ax < 0.22) & (ay < 0.9)) | ((ay < 0.22) & (ax < 0.9)),    # plus
        ((ax - ay).abs() < 0.22) & (box < 0.85),                    # cross
        (ay < 0.3) & (ax < 0.95),                                   # bar
        ax + ay < 0.95,                                             # diamond
        (((px - 0.5) ** 2 + py ** 2) < 0.13) | (((px + 0.5) ** 2 + py ** 2) < 0.13),  # dots
    ], dim=1)
    return masks.gather(1, label.view(-1, 1, 1, 1).expand(-1, 1, *px.shape[-2:])).squeeze(1)


def make_synthetic(n: int, seed: int, size: int = 28, channels: int = 1,
                   chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 images of shape (channels, size, size) and their labels in 0..9."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    centre = (torch.rand(n, 2, generator=g) - 0.5) * 0.6
    scale = 0.45 + 0.25 * torch.rand(n, generator=g)
    angle = (torch.rand(n, generator=g) - 0.5) * (math.pi / 6)
    bright = 0.6 + 0.4 * torch.rand(n, generator=g)
    colour = 0.2 + 0.8 * torch.rand(n, channels, generator=g) if channels > 1 else torch.ones(n, 1)
    s2 = 2 * size
    grid = (torch.arange(s2, dtype=torch.float32) + 0.5) / s2 * 2 - 1
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")
    out = torch.empty(n, channels, size, size, dtype=torch.uint8)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        sl = slice(a, b)
        u = (gx - centre[sl, 0, None, None]) / scale[sl, None, None]
        v = (gy - centre[sl, 1, None, None]) / scale[sl, None, None]
        c, s = torch.cos(angle[sl])[:, None, None], torch.sin(angle[sl])[:, None, None]
        px, py = c * u + s * v, -s * u + c * v
        mask = _shape_masks(px, py, labels[sl]).float().unsqueeze(1)
        img = torch.nn.functional.avg_pool2d(mask, 2)            # anti-aliased grey edges
        img = img * bright[sl, None, None, None] * colour[sl, :, None, None]
        out[sl] = (img * 255).round().clamp(0, 255).to(torch.uint8)
    return out, labels


class Synthetic(DataSet):
    """``dataset=synthetic``: ``num_train`` + ``num_test`` images of ``channels`` x
    ``image_size`` x ``image_size``, generated offline (the test split with seed + 1)."""

    checks = {"num_train": integer(2, what="an integer > 1"), "num_test": integer(1),
              "image_size": integer(8), "channels": one_of(1, 3), "generator_seed": integer(0)}

    def __init__(self, num_train: int = 10000, num_test: int = 2000, image_size: int = 28,
                 channels: int = 1, generator_seed: int = 0, **common):
        super().__init__(**common)
        self.num_train, self.num_test = int(num_train), int(num_test)
        self.image_size, self.channels = int(image_size), int(channels)
        self.generator_seed = int(generator_seed)

    def generated_bytes(self) -> int:
        return (self.num_train + self.num_test) * self.channels * self.image_size ** 2

    def read(self) -> ImageData:
        size, ch, seed = self.image_size, self.channels, self.generator_seed
        tx, ty = make_synthetic(self.num_train, seed, size, ch)
        ex, ey = make_synthetic(self.num_test, seed + 1, size, ch)
        return ImageData(self.name, tx, ty, ex, ey, classes=list(CLASSES))
