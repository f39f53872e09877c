"""Recurrent VAE over sequences (in the spirit of Bowman et al. 2016 and Fabius & van Amersfoort
2015): a GRU or LSTM encoder reads the T steps and gives a diagonal Gaussian q(z|x); a
recurrent decoder starts from a hidden state computed from z and receives z at every step.

A data set (N, C, H, W) is read as T = H steps of F = C * W features: sequence sets are
(N, 1, T, F), images are read row by row. The decoder never sees a previous frame, true or
predicted: its output is a function of z alone. Teacher forcing with the true previous frame
would let it copy x_{t-1} and make reconstruction trivial (z unused); feeding back its own
prediction adds no information (the prediction is already a function of z) but forces a
T-step Python loop. With z-only input p(x|z) factorises over steps given z, all steps run in
one fused RNN call, and sampling computes exactly what training optimised.

Pictures: for sequence data (W == 1) line plots drawn with PIL (input and reconstruction in
each panel, prior samples, traversals, interpolations); for images the usual image grids.
"""

from __future__ import annotations

import logging
import math
import sys

import torch

from vae_train.errors import UserError
from vae_train.models.base import GaussianVAE
from vae_train.pictures import default_figures, pil_to_tensor
from vae_train.nets.rnn import (CELLS, SequenceDecoder, SequenceEncoder, from_sequence,
                                to_sequence)

log = logging.getLogger(__name__)

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


class RNNVAE(GaussianVAE):
    def __init__(self, input_shape, latent_dim: int = 16, hidden_dim: int = 256,
                 num_layers: int = 1, cell: str = "gru", bidirectional: bool = True,
                 num_classes: int = 0, likelihood=None):
        if cell not in CELLS:
            raise UserError(f"model.cell={cell!r} is invalid: it must be one of "
                            f"{', '.join(CELLS)}")
        for key, v in (("hidden_dim", hidden_dim), ("num_layers", num_layers),
                       ("latent_dim", latent_dim)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise UserError(f"model.{key}={v!r} is invalid: it must be a positive integer")
        if not isinstance(bidirectional, bool):
            raise UserError(f"model.bidirectional={bidirectional!r} is invalid: it must be "
                            "true or false")
        super().__init__(input_shape, latent_dim, num_classes, likelihood)
        c, self.steps, w = self.input_shape
        self.features = c * w
        self.encoder = SequenceEncoder(self.features, hidden_dim, num_layers,
                                       2 * self.latent_dim, cell, bidirectional)
        self.decoder = SequenceDecoder(self.latent_dim, hidden_dim, num_layers, self.features,
                                       cell)
        if self.is_sequence and getattr(self.likelihood, "name", "") == "bernoulli":
            log.warning("rnn_vae on a sequence set with loss.likelihood=bernoulli: for "
                        "real-valued sequences (dataset=sines) the loss is a cross-entropy, not "
                        "a log-density; use loss.likelihood=gaussian")

    @property
    def is_sequence(self) -> bool:
        """(1, T, F)-style data with one column: drawn as line plots, not images."""
        return self.input_shape[2] == 1

    def encoder_forward(self, x, y):
        return self.encoder(to_sequence(x))

    def decoder_forward(self, z, y):
        return from_sequence(self.decoder(z, self.steps), self.input_shape)

    # -- pictures -----------------------------------------------------------------------
    def _seq(self, x: torch.Tensor) -> torch.Tensor:
        return to_sequence(x.float())                          # (B, T, F)

    @torch.no_grad()
    def reconstruction_plots(self, x: torch.Tensor) -> torch.Tensor:
        recon = self.reconstruct(x)
        return plot_panels([[(a, INPUT), (b, RECON)]
                            for a, b in zip(self._seq(x), self._seq(recon))])

    @torch.no_grad()
    def sample_plots(self, n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed))
        return plot_panels([[(s, SAMPLE)] for s in self._seq(self.sample(n, generator=g))])

    @torch.no_grad()
    def traversal_plots(self, x: torch.Tensor, dims: list, steps: int = 9,
                        span: float = 3.0) -> torch.Tensor:
        """One panel per code dimension: the code of ``x[0]`` with that dimension swept over
        +-span, blue (-span) to red (+span); the input in thin grey."""
        c = self.code(x[:1])
        offsets = torch.linspace(-span, span, steps, device=c.device)
        panels = []
        for d in dims:
            codes = c.repeat(steps, 1)
            codes[:, d] = c[0, d] + offsets
            seqs = self._seq(self.decode_code(codes))
            panels.append([(self._seq(x[:1])[0], (170, 170, 170))]
                          + [(s, _gradient(i, steps)) for i, s in enumerate(seqs)])
        return plot_panels(panels, cols=min(len(panels), 5), size=(200, 96))

    @torch.no_grad()
    def interpolation_plots(self, x: torch.Tensor, pairs: int, steps: int = 10) -> torch.Tensor:
        """One panel per pair (x[2i], x[2i+1]): decoded codes on the line between their
        posterior means, blue (first) to red (second)."""
        t = torch.linspace(0, 1, steps, device=x.device).view(-1, 1)
        panels = []
        for i in range(pairs):
            ca, cb = self.code(x[2 * i:2 * i + 1]), self.code(x[2 * i + 1:2 * i + 2])
            seqs = self._seq(self.decode_code((1 - t) * ca + t * cb))
            panels.append([(s, _gradient(j, steps)) for j, s in enumerate(seqs)])
        return plot_panels(panels, cols=min(len(panels), 4), size=(200, 96))

    def figures(self, x, y, n, seed=0) -> dict:
        if not self.is_sequence:
            return default_figures(self, x, y, n, seed)
        return {"reconstructions": self.reconstruction_plots(x[:n]),
                "samples": self.sample_plots(n, seed)}

    def sample_figures(self, x, y, args) -> dict:
        from vae_train.sample import code_kl, default_sample_figures

        if not self.is_sequence:
            return default_sample_figures(self, x, y, args)
        kl = code_kl(self, x, None).cpu()
        order = torch.argsort(kl, descending=True)[:int(args.dims)].tolist()
        i = int(args.image)
        print("traversed code dimensions (mean KL, nats): "
              + ", ".join(f"{d} ({kl[d]:.2f})" for d in order), file=sys.stderr)
        return {
            "samples": self.sample_plots(int(args.n), int(args.seed)),
            "reconstructions": self.reconstruction_plots(x[:int(args.n)]),
            "traversals": self.traversal_plots(x[i:i + 1], order, int(args.steps),
                                               float(args.span)),
            "interpolations": self.interpolation_plots(x, int(args.pairs),
                                                       int(args.interp_steps)),
        }
