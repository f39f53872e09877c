"""The interface every Gaussian-latent model meets.

A model maps an image batch ``x`` (float, ``(B, C, H, W)`` in [0, 1]) and optional labels ``y``
to the approximate posterior ``q(z|x)`` (:meth:`encode`) and maps latent codes back to the
decoder output (:meth:`decode`), which its ``likelihood`` turns into ``log p(x|z)`` and a mean
image. The prior is a standard normal. Objectives in ``losses.py`` are written once against
this interface.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vae_train.losses import BernoulliLikelihood, DiagGaussian


class GaussianVAE(nn.Module):
    """Base class: subclasses set ``self.encoder`` (to 2 * latent_dim numbers) and
    ``self.decoder`` (to one number per pixel), and say whether they are conditional."""

    conditional = False

    def __init__(self, input_shape, latent_dim: int, num_classes: int = 0,
                 likelihood: nn.Module | None = None):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.latent_dim = int(latent_dim)
        self.num_classes = int(num_classes)
        self.likelihood = likelihood if likelihood is not None else BernoulliLikelihood()

    # -- conditioning -------------------------------------------------------------------
    def _onehot(self, y: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if y is None:
            raise ValueError(f"{type(self).__name__} is conditional: it needs class labels y")
        return F.one_hot(y.long(), self.num_classes).to(like.dtype)

    # -- the interface ------------------------------------------------------------------
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> DiagGaussian:
        mu, logvar = self.encoder_forward(x, y).float().chunk(2, dim=-1)
        return DiagGaussian(mu, logvar)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder_forward(z, y).view(z.shape[0], *self.input_shape)

    def encoder_forward(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def decoder_forward(self, z, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def prior(self, n: int, device=None) -> DiagGaussian:
        return DiagGaussian.standard((n, self.latent_dim), device=device)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        """One reparameterised pass: decoder output, per-example KL(q || p), z and q."""
        q = self.encode(x, y)
        z = q.rsample()
        x_out = self.decode(z, y)
        kl = q.kl_to_standard_normal().sum(-1)
        return {"x_out": x_out, "kl": kl, "z": z, "q": q}

    # -- pictures -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images of p(x|z) for z drawn from the prior."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator,
                        device="cpu" if generator is None else generator.device).to(device)
        return self.likelihood.mean(self.decode(z, y))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean image of p(x|z) at the posterior mean z."""
        return self.likelihood.mean(self.decode(self.encode(x, y).mu, y))
