"""Drawings that are not image grids, made with PIL: line plots of sequences (inputs against
reconstructions, prior samples, traversals and interpolations of the code) and the scatter
plot of 2-D codes. Each returns one (3, H, W) float image in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vae_train.nets.rnn import to_sequence


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


INPUT, RECON, SAMPLE = (31, 119, 180), (255, 127, 14), (44, 160, 44)   # blue, orange, green
LOW, HIGH = (31, 119, 180), (214, 39, 40)                              # sweep: blue -> red


def _gradient(i: int, n: int) -> tuple:
    t = i / max(1, n - 1)
    return tuple(round(a + (b - a) * t) for a, b in zip(LOW, HIGH))


def plot_panels(panels: list, cols: int | None = None, size: tuple | None = None,
                lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """A grid of small line plots as a (3, H, W) float image in [0, 1].

    ``panels``: one list per panel of ``(values, (r, g, b))`` curves; ``values`` is (T,) or
    (T, F) (one line per feature), drawn over the value range [lo, hi] (clipped), time left to
    right. Panels have a white background and a light midline; the grid's gaps are grey.
    """
    from PIL import Image, ImageDraw

    n = max(1, len(panels))
    cols = cols or max(1, int(math.sqrt(n)))
    rows = math.ceil(n / cols)
    steps = max((len(v) for p in panels for v, _ in p), default=2)
    w, h = size or (int(min(200, max(64, 2 * steps + 8))), 64)
    gap, pad = 2, 3
    img = Image.new("RGB", (cols * (w + gap) + gap, rows * (h + gap) + gap), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    for i, curves in enumerate(panels):
        x0, y0 = gap + (i % cols) * (w + gap), gap + (i // cols) * (h + gap)
        draw.rectangle([x0, y0, x0 + w - 1, y0 + h - 1], fill="white")
        draw.line([(x0, y0 + h // 2), (x0 + w - 1, y0 + h // 2)], fill=(225, 225, 225))
        for values, colour in curves:
            v = values.detach().float().cpu().reshape(len(values), -1)
            if len(v) < 2:
                continue
            xs = x0 + pad + torch.arange(len(v)) * ((w - 1 - 2 * pad) / (len(v) - 1))
            ys = y0 + pad + (hi - v.clamp(lo, hi)) / (hi - lo) * (h - 1 - 2 * pad)
            for f in range(v.shape[1]):
                draw.line(list(zip(xs.tolist(), ys[:, f].tolist())), fill=colour, width=1)
    return pil_to_tensor(img)


def _seq(x: torch.Tensor) -> torch.Tensor:
    return to_sequence(x.float())                          # (B, T, F)


def _given(model, y):
    return y if model.conditional else None


@torch.no_grad()
def reconstruction_plots(model, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    recon = model.reconstruct(x, _given(model, y))
    return plot_panels([[(a, INPUT), (b, RECON)]
                        for a, b in zip(_seq(x), _seq(recon))])


@torch.no_grad()
def sample_plots(model, n: int, seed: int = 0) -> torch.Tensor:
    """Prior draws (conditional models: labels cycle 0, 1, ...)."""
    g = torch.Generator().manual_seed(int(seed))
    y = (torch.arange(n) % model.num_classes).to(model.device) if model.conditional else None
    return plot_panels([[(s, SAMPLE)] for s in _seq(model.sample(n, y, generator=g))])


@torch.no_grad()
def traversal_plots(model, x: torch.Tensor, y: torch.Tensor | None, dims: list,
                    steps: int = 9, span: float = 3.0) -> torch.Tensor:
    """One panel per code dimension: the code of ``x[0]`` with that dimension swept over
    +-span, blue (-span) to red (+span); the input in thin grey."""
    y0 = _given(model, None if y is None else y[:1])
    c = model.code(x[:1], y0)
    offsets = torch.linspace(-span, span, steps, device=c.device)
    panels = []
    for d in dims:
        codes = c.repeat(steps, 1)
        codes[:, d] = c[0, d] + offsets
        seqs = _seq(model.decode_code(codes, None if y0 is None else y0.repeat(steps)))
        panels.append([(_seq(x[:1])[0], (170, 170, 170))]
                      + [(s, _gradient(i, steps)) for i, s in enumerate(seqs)])
    return plot_panels(panels, cols=min(len(panels), 5), size=(200, 96))


@torch.no_grad()
def interpolation_plots(model, x: torch.Tensor, y: torch.Tensor | None, pairs: int,
                        steps: int = 10) -> torch.Tensor:
    """One panel per pair (x[2i], x[2i+1]): decoded codes on the line between their
    posterior means, blue (first) to red (second); a conditional model decodes the whole
    line with the first one's label."""
    t = torch.linspace(0, 1, steps, device=x.device).view(-1, 1)
    y = _given(model, y)
    panels = []
    for i in range(pairs):
        ya, yb = (None, None) if y is None else (y[2 * i:2 * i + 1], y[2 * i + 1:2 * i + 2])
        ca, cb = model.code(x[2 * i:2 * i + 1], ya), model.code(x[2 * i + 1:2 * i + 2], yb)
        seqs = _seq(model.decode_code((1 - t) * ca + t * cb,
                                      None if ya is None else ya.repeat(steps)))
        panels.append([(s, _gradient(j, steps)) for j, s in enumerate(seqs)])
    return plot_panels(panels, cols=min(len(panels), 4), size=(200, 96))
