"""Pictures of video models (``vae_train.models.video_vae.VideoModel``): frame strips (one row
per sequence, one column per frame), reconstructions, samples, the content-swap and
dynamics-sampling grids, next-frame prediction, and an animated GIF of samples. Each strip
picture is one (3, H, W) float image in [0, 1]; groups of rows are separated by a grey gap.

Every picture that draws at random uses its own seeded generator, so drawing never moves the
training RNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vae_train.pictures.image import make_grid

PAD = 0.5          # grey between frames and rows
MIN_SIDE = 48      # frames smaller than this are drawn larger (nearest neighbour)
GAP = 8            # pixels of grey between groups of rows


def _scale(frames: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> frames of at least ``MIN_SIDE`` pixels, grey as RGB."""
    side = min(frames.shape[-2:])
    if side < MIN_SIDE:
        f = math.ceil(MIN_SIDE / side)
        frames = F.interpolate(frames, scale_factor=f, mode="nearest")
    return frames


def strip(rows: list[torch.Tensor], gap_after: int = 0) -> torch.Tensor:
    """Rows of frames, each (T, C, H, W) (all of one T), as one image: column t is frame t.
    ``gap_after`` > 0: rows in groups of that many, a thin grey band (``GAP`` pixels) between
    groups."""
    t = rows[0].shape[0]
    size = gap_after if gap_after else len(rows)
    parts = []
    for a in range(0, len(rows), size):
        frames = _scale(torch.cat(rows[a:a + size]).detach().float().cpu().clamp(0, 1))
        if parts:
            parts.append(torch.full((3, GAP, parts[0].shape[2]), PAD))
        parts.append(make_grid(frames, nrow=t, pad_value=PAD, padding=2))
    return torch.cat(parts, 1)


@torch.no_grad()
def reconstruction_strips(model, x: torch.Tensor, n: int = 8) -> torch.Tensor:
    """Pairs of rows: a test sequence above its reconstruction."""
    x = x[:n]
    recon = model.reconstruct(x)
    rows = []
    for a, b in zip(x, recon):
        rows += [a, b]
    return strip(rows, gap_after=2)


@torch.no_grad()
def sample_videos(model, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` sequences drawn from the prior (content and dynamics), (n, T, C, H, W)."""
    return model.sample(n, None, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample_strips(model, n: int = 8, seed: int = 0) -> torch.Tensor:
    """One row per sequence drawn from the prior."""
    return strip(list(sample_videos(model, n, seed)))


@torch.no_grad()
def content_swap_grid(model, x: torch.Tensor, pairs: int = 4) -> torch.Tensor:
    """Groups of three rows for pairs (A, B) of test sequences: A (its dynamics are used),
    B (its content is used), then A's dynamics drawn with B's content."""
    pairs = max(1, min(pairs, len(x) // 2))
    a, b = x[:pairs], x[pairs:2 * pairs]
    swapped = model.swap(a, b)
    rows = []
    for i in range(pairs):
        rows += [a[i], b[i], swapped[i]]
    return strip(rows, gap_after=3)


@torch.no_grad()
def dynamics_grid(model, x: torch.Tensor, sequences: int = 2, draws: int = 4,
                  seed: int = 0) -> torch.Tensor:
    """Per test sequence: the sequence, then ``draws`` rows of its content with dynamics drawn
    from the prior."""
    x = x[:sequences]
    g = torch.Generator().manual_seed(seed)
    drawn = model.sample_dynamics(x, draws, generator=g)       # (B, draws, T, C, H, W)
    rows = []
    for i in range(len(x)):
        rows += [x[i], *drawn[i]]
    return strip(rows, gap_after=draws + 1)


@torch.no_grad()
def prediction_strips(model, x: torch.Tensor, prefix: int, n: int = 4) -> torch.Tensor:
    """Pairs of rows: a test sequence, then its first ``prefix`` frames followed by the frames
    the model predicts from them (the prefix is drawn dimmed, so the predictions stand out)."""
    x = x[:n]
    pred = model.predict(x[:, :prefix], x.shape[1] - prefix)
    rows = []
    for i in range(len(x)):
        rows += [x[i], torch.cat([0.5 * x[i, :prefix], pred[i]])]
    return strip(rows, gap_after=2)


def _tile(frames: torch.Tensor, nrow: int) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one uint8 (H', W', 3) image, ``nrow`` per row."""
    grid = make_grid(_scale(frames.float().cpu().clamp(0, 1)), nrow=nrow, pad_value=PAD,
                     padding=2)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def write_gif(videos: torch.Tensor, path: str | Path, fps: float = 5.0,
              nrow: int | None = None) -> Path:
    """An animated GIF (looping) of videos (N, T, C, H, W) in [0, 1]: every frame of the GIF
    tiles frame t of each video, ``nrow`` per row (default: a square)."""
    from PIL import Image

    n, t = videos.shape[:2]
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    grey = videos.shape[2] == 1        # grey frames as grey levels: no colour palette to dither
    frames = [Image.fromarray(_tile(videos[:, i], nrow)[..., 0] if grey else
                              _tile(videos[:, i], nrow)) for i in range(t)]
    path = Path(path)
    frames[0].save(path, save_all=True, append_images=frames[1:],
                   duration=int(round(1000 / fps)), loop=0)
    return path


@torch.no_grad()
def video_training_figures(model, x: torch.Tensor, seed: int = 0, n: int = 8) -> dict:
    """The strips shown during training: reconstructions and samples."""
    return {"reconstructions": reconstruction_strips(model, x, n),
            "samples": sample_strips(model, n, seed)}


@torch.no_grad()
def video_sample_figures(model, x: torch.Tensor, n: int = 8, seed: int = 0,
                         pairs: int = 4) -> dict:
    """``sample``'s strips: reconstructions, samples, content swap, dynamics sampling and
    next-frame prediction (from the model's ``prefix`` frames)."""
    figs = video_training_figures(model, x, seed, n)
    figs["content_swap"] = content_swap_grid(model, x, pairs)
    figs["dynamics"] = dynamics_grid(model, x, seed=seed)
    figs["prediction"] = prediction_strips(model, x, model.prefix, min(n, 4))
    return figs
