"""Tiling images into one grid picture and writing it as a PNG: what the pictures need of
``torchvision.utils`` (``make_grid``, ``save_image``), with the same layout and the same
bytes, without importing torchvision (whose ``utils`` imports ``torchvision.models`` and with it
``torch._dynamo``: about 1.5 s of every command's start).

Layout (torchvision's): the images in rows of ``nrow``, ``padding`` pixels of ``pad_value``
between them and around the border; one-channel images become three-channel grey; a single
image is returned as it is (three channels), without a border.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def make_grid(images: torch.Tensor | list[torch.Tensor], nrow: int = 8, padding: int = 2,
              pad_value: float = 0.0) -> torch.Tensor:
    """(B, C, H, W) images (or a list of (C, H, W), or one (C, H, W) or (H, W) image) as one
    (3, H', W') grid (C = 1 or 3; other channel counts are kept as they are)."""
    t = torch.stack(list(images)) if isinstance(images, (list, tuple)) else images
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"make_grid takes a tensor or a list of tensors, not {type(t).__name__}")
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() == 3:
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise ValueError(f"make_grid takes images (B, C, H, W), not a tensor of shape "
                         f"{tuple(t.shape)}")
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    if t.shape[0] == 1:
        return t[0].clone()
    n, c, h, w = t.shape
    cols = min(int(nrow), n)
    rows = math.ceil(n / cols)
    hp, wp = h + padding, w + padding
    grid = t.new_full((c, rows * hp + padding, cols * wp + padding), pad_value)
    for k in range(n):
        y, x = divmod(k, cols)
        grid[:, y * hp + padding: y * hp + hp, x * wp + padding: x * wp + wp] = t[k]
    return grid


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A (C, H, W) float image in [0, 1] as (H, W, C) uint8, rounded as torchvision does
    (x * 255 + 0.5, clamped, truncated)."""
    return image.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", torch.uint8)


def save_image(images: torch.Tensor | list[torch.Tensor], path: str | Path, nrow: int = 8,
               padding: int = 2, pad_value: float = 0.0) -> Path:
    """``images`` (as :func:`make_grid` takes them, values in [0, 1]) tiled and written at
    ``path`` as an RGB image in the format its suffix names (``.png``)."""
    from PIL import Image

    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    Image.fromarray(to_uint8(grid.detach().float()).numpy()).save(str(path))
    return Path(path)
