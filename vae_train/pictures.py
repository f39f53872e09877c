"""Image grids a user looks at: reconstructions, prior samples, per-class samples, 2-D manifold.

Every grid is drawn with its own seeded generator, so drawing pictures never moves the
training RNG (and so never changes a run's result).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.utils import make_grid, save_image


def _rows(n: int) -> int:
    return max(1, int(math.sqrt(n)))


@torch.no_grad()
def reconstruction_grid(model, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Pairs of rows: inputs above their reconstructions (at the posterior mean)."""
    recon = model.reconstruct(x, y if model.conditional else None).to(x.dtype)
    per_row = _rows(len(x))
    rows = []
    for a in range(0, len(x), per_row):
        rows += [x[a:a + per_row], recon[a:a + per_row]]
    return make_grid(torch.cat(rows).cpu().float(), nrow=per_row, pad_value=0.5)


@torch.no_grad()
def prior_samples(model, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = None
    if model.conditional:
        y = (torch.arange(n) % model.num_classes).to(next(model.parameters()).device)
    return make_grid(model.sample(n, y, generator=g).cpu(), nrow=_rows(n), pad_value=0.5)


@torch.no_grad()
def class_grid(model, per_class: int = 10, seed: int = 0) -> torch.Tensor:
    """One row per class; each column shares one z, so a column is one 'style'."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(per_class, model.code_dim, generator=g).to(device)
    k = model.num_classes
    y = torch.arange(k, device=device).repeat_interleave(per_class)
    imgs = model.decode_code(z.repeat(k, 1), y)
    return make_grid(imgs.cpu(), nrow=per_class, pad_value=0.5)


@torch.no_grad()
def manifold(model, side: int = 15, label: int = 0, span: float | None = None) -> torch.Tensor:
    """For 2-D codes: decode a grid of z at evenly spaced Gaussian quantiles (conditional
    models: for class ``label``), or evenly spaced over [-span, span] when ``span`` is given
    (priors that are not standard normal)."""
    device = next(model.parameters()).device
    q = (torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, side))
         if span is None else torch.linspace(-span, span, side))
    zy, zx = torch.meshgrid(q.flip(0), q, indexing="ij")
    z = torch.stack([zx.reshape(-1), zy.reshape(-1)], dim=1).to(device)
    y = torch.full((len(z),), label, device=device) if model.conditional else None
    imgs = model.decode_code(z, y)
    return make_grid(imgs.cpu(), nrow=side, pad_value=0.5)


@torch.no_grad()
def traversals(model, x: torch.Tensor, y: torch.Tensor | None, dims: list[int],
               steps: int = 9, span: float = 3.0, scale: torch.Tensor | None = None
               ) -> torch.Tensor:
    """One row per code dimension in ``dims``: the code of image ``x[0]`` with that dimension
    swept over +-``span`` prior standard deviations (or ``scale[d]`` units) around its value;
    the input image is drawn at the left of every row."""
    y0 = y[:1] if model.conditional else None
    c = model.code(x[:1], y0)                                      # (1, D)
    offsets = torch.linspace(-span, span, steps, device=c.device)
    rows = []
    for d in dims:
        codes = c.repeat(steps, 1)
        codes[:, d] = c[0, d] + offsets * (1.0 if scale is None else float(scale[d]))
        imgs = model.decode_code(codes, None if y0 is None else y0.repeat(steps))
        rows.append(torch.cat([x[:1].float(), imgs.to(x.dtype)]))
    return make_grid(torch.cat(rows).cpu().float(), nrow=steps + 1, pad_value=0.5)


@torch.no_grad()
def interpolations(model, x: torch.Tensor, y: torch.Tensor | None, pairs: int,
                   steps: int = 10) -> torch.Tensor:
    """One row per pair of images (x[2i], x[2i+1]): the first image, the decoded codes on the
    straight line between their posterior means, the second image."""
    rows = []
    t = torch.linspace(0, 1, steps, device=x.device).view(-1, 1)
    for i in range(pairs):
        a, b = x[2 * i:2 * i + 1], x[2 * i + 1:2 * i + 2]
        ya = y[2 * i:2 * i + 1] if model.conditional else None
        ca, cb = model.code(a, ya), model.code(b, y[2 * i + 1:2 * i + 2] if ya is not None else None)
        imgs = model.decode_code((1 - t) * ca + t * cb, None if ya is None else ya.repeat(steps))
        rows.append(torch.cat([a, imgs.to(x.dtype), b]))
    return make_grid(torch.cat(rows).cpu().float(), nrow=steps + 2, pad_value=0.5)


def pil_to_tensor(img) -> torch.Tensor:
    """A PIL RGB image as a (3, H, W) float tensor in [0, 1] (what the grids are)."""
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


# Ten distinguishable colours (one per class), as RGB.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def latent_scatter(codes: torch.Tensor, labels: torch.Tensor | None,
                   background: torch.Tensor | None = None, span: float = 3.0,
                   size: int = 320) -> torch.Tensor:
    """A scatter plot of 2-D codes over [-span, span]^2, coloured by class, drawn over
    ``background`` points (prior samples) in light grey; axes through the origin."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    to_px = lambda v: (v.clamp(-span, span) + span) / (2 * span) * (size - 1)  # noqa: E731
    draw.line([(size // 2, 0), (size // 2, size)], fill=(200, 200, 200))
    draw.line([(0, size // 2), (size, size // 2)], fill=(200, 200, 200))
    grey = torch.full((len(background),), -1) if background is not None else None
    layers = [(background, grey), (codes, labels)] if background is not None else \
        [(codes, labels)]
    for pts, lab in layers:
        px, py = to_px(pts[:, 0].float().cpu()), to_px(-pts[:, 1].float().cpu())
        for i in range(len(pts)):
            c = -2 if lab is None else int(lab[i])
            colour = (190, 190, 190) if c == -1 else (0, 0, 0) if c == -2 else \
                PALETTE[c % len(PALETTE)]
            x0, y0 = float(px[i]), float(py[i])
            draw.ellipse([x0 - 1.5, y0 - 1.5, x0 + 1.5, y0 + 1.5], fill=colour)
    return pil_to_tensor(img)


def default_figures(model, x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0) -> dict:
    """Reconstructions, prior samples, the class grid (conditional) and the manifold (2-D)."""
    out = {"reconstructions": reconstruction_grid(model, x[:n], y[:n]),
           "samples": prior_samples(model, n, seed)}
    if model.conditional:
        out["class_samples"] = class_grid(model, seed=seed)
    if model.code_dim == 2:
        out["manifold"] = manifold(model)
    return out


def figures(model, x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0) -> dict:
    """The grids for this model: name -> (3, H, W) float image in [0, 1]. A model with its own
    pictures (sequence plots, a discrete code) defines ``figures(x, y, n, seed)``."""
    was_training = model.training
    model.eval()
    try:
        if hasattr(model, "figures"):
            return model.figures(x[:n], y[:n], n, seed)
        return default_figures(model, x, y, n, seed)
    finally:
        model.train(was_training)


def save_figures(figs: dict, folder) -> list:
    paths = []
    for name, img in figs.items():
        path = f"{folder}/{name}.png"
        save_image(img, path)
        paths.append(path)
    return paths
