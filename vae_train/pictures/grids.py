"""Image grids: reconstructions, prior samples, per-class samples, the 2-D manifold, traversals
and interpolations of a continuous code, per-variable sweeps of a categorical code, and code
maps of a grid of discrete codes. Each returns one (3, H, W) float image in [0, 1].

Every grid that draws at random uses its own seeded generator, so drawing pictures never moves
the training RNG (and so never changes a run's result).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vae_train.pictures.image import make_grid


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
        y = (torch.arange(n) % model.num_classes).to(model.device)
    return make_grid(model.sample(n, y, generator=g).cpu(), nrow=_rows(n), pad_value=0.5)


@torch.no_grad()
def class_grid(model, per_class: int = 10, seed: int = 0) -> torch.Tensor:
    """One row per class; each column shares one z, so a column is one 'style'."""
    device = model.device
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
    device = model.device
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
        yb = y[2 * i + 1:2 * i + 2] if ya is not None else None
        ca, cb = model.code(a, ya), model.code(b, yb)
        imgs = model.decode_code((1 - t) * ca + t * cb, None if ya is None else ya.repeat(steps))
        rows.append(torch.cat([a, imgs.to(x.dtype), b]))
    return make_grid(torch.cat(rows).cpu().float(), nrow=steps + 2, pad_value=0.5)


@torch.no_grad()
def categorical_traversals(model, x: torch.Tensor, variables: list[int]) -> torch.Tensor:
    """One row per variable in ``variables`` of a categorical code: image ``x[0]`` at the left,
    then the image's most probable code with that variable set to each of its K classes."""
    c = model.mode(x[:1])                                          # (1, N)
    classes = torch.arange(model.num_categories, device=c.device)
    rows = []
    for v in variables:
        codes = c.repeat(model.num_categories, 1)
        codes[:, v] = classes
        imgs = model.decode_classes(codes)
        rows.append(torch.cat([x[:1].float(), imgs.to(torch.float32)]))
    return make_grid(torch.cat(rows).cpu().float(), nrow=model.num_categories + 1,
                     pad_value=0.5)


@torch.no_grad()
def code_map(model, x: torch.Tensor) -> torch.Tensor:
    """For a grid of discrete codes: each input beside its grid of code indices, one colour per
    code (a fixed random palette)."""
    idx = model.codes(x)
    g = torch.Generator().manual_seed(0)
    palette = torch.rand(model.num_codes, 3, generator=g).to(idx.device)
    maps = palette[idx].permute(0, 3, 1, 2)                           # (B, 3, h, w)
    maps = F.interpolate(maps, size=model.input_shape[1:], mode="nearest")
    imgs = x.float().expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.float()
    pairs = torch.stack([imgs, maps], dim=1).flatten(0, 1)
    return make_grid(pairs.cpu(), nrow=16, pad_value=0.5)


def swap_targets(y: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """The labels a class-swap grid decodes each image with: every class for (B,) class
    labels; for (B, A) multi-hot attributes (CelebA), each attribute flipped in turn."""
    if y.dim() == 1:
        return [torch.full_like(y, k) for k in range(num_classes)]
    out = []
    for j in range(y.shape[1]):
        t = y.clone()
        t[:, j] = 1 - t[:, j]
        out.append(t)
    return out


@torch.no_grad()
def class_swap_images(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, 1 + K, C, H, W): each image, then its style code (the posterior mean of the code
    given the image and its own label) decoded with each target label of
    :func:`swap_targets`: the same handwriting drawn as every class."""
    c = model.code(x, y)
    cols = [x.float()] + [model.decode_code(c, t).float()
                          for t in swap_targets(y, model.num_classes)]
    return torch.stack(cols, dim=1)


def class_swap(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One row per test image: the image at the left, then its style drawn as every class
    (or with each attribute flipped)."""
    imgs = class_swap_images(model, x, y)
    return make_grid(imgs.flatten(0, 1).cpu(), nrow=imgs.shape[1], pad_value=0.5)


@torch.no_grad()
def layer_variations_images(model, n: int = 8, seed: int = 0, rows: int = 2) -> torch.Tensor:
    """(rows, L, n, C, H, W) draws from a :class:`~vae_train.models.base.Hierarchy` model's
    prior: for each of ``rows`` draws held fixed (one base noise per layer) and each layer l
    from the top, ``n`` images in which only layer l's noise is drawn afresh; the layers above
    keep their held draw and the layers below follow their prior at their held noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(rows):
        base = model.layer_noise(1, g)
        per_layer = []
        for layer in reversed(range(len(base))):
            noise = [b.expand(n, *b.shape[1:]).clone() for b in base]
            noise[layer] = model.layer_noise(n, g)[layer]
            per_layer.append(model.sample_from_noise(noise).float().cpu())
        out.append(torch.stack(per_layer))
    return torch.stack(out)


def layer_variations(model, n: int = 8, seed: int = 0, rows: int = 2) -> torch.Tensor:
    """Per-layer traversals of a hierarchy: blocks of one row per layer (the top first), each
    row varying that layer alone (:func:`layer_variations_images`); a row that changes little
    is a layer that holds little."""
    imgs = layer_variations_images(model, n, seed, rows)
    return make_grid(imgs.flatten(0, 2), nrow=n, pad_value=0.5)
