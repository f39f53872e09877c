"""Image grids a user looks at: reconstructions, prior samples, per-class samples, 2-D manifold.

Every grid is drawn with its own seeded generator, so drawing pictures never moves the
training RNG (and so never changes a run's result).
"""

from __future__ import annotations

import math

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
    z = torch.randn(per_class, model.latent_dim, generator=g).to(device)
    k = model.num_classes
    y = torch.arange(k, device=device).repeat_interleave(per_class)
    imgs = model.likelihood.mean(model.decode(z.repeat(k, 1), y))
    return make_grid(imgs.cpu(), nrow=per_class, pad_value=0.5)


@torch.no_grad()
def manifold(model, side: int = 15) -> torch.Tensor:
    """For 2-D latents: decode a grid of z at evenly spaced Gaussian quantiles."""
    device = next(model.parameters()).device
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, side))
    zy, zx = torch.meshgrid(q.flip(0), q, indexing="ij")
    z = torch.stack([zx.reshape(-1), zy.reshape(-1)], dim=1).to(device)
    imgs = model.likelihood.mean(model.decode(z, None))
    return make_grid(imgs.cpu(), nrow=side, pad_value=0.5)


def figures(model, x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0) -> dict:
    """The grids for this model: name -> (3, H, W) float image in [0, 1]."""
    was_training = model.training
    model.eval()
    out = {"reconstructions": reconstruction_grid(model, x[:n], y[:n]),
           "samples": prior_samples(model, n, seed)}
    if model.conditional:
        out["class_samples"] = class_grid(model, seed=seed)
    elif model.latent_dim == 2:
        out["manifold"] = manifold(model)
    model.train(was_training)
    return out


def save_figures(figs: dict, folder) -> list:
    paths = []
    for name, img in figs.items():
        path = f"{folder}/{name}.png"
        save_image(img, path)
        paths.append(path)
    return paths
