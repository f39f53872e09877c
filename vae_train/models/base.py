"""The interface every Gaussian-latent model meets.

A model maps an image batch ``x`` (float, ``(B, C, H, W)`` in [0, 1]) and optional labels ``y``
to its latent variables and back. Objectives (``losses.py``) and evaluation are written once,
against :meth:`GaussianVAE.infer`, which returns for ``k`` posterior samples per example:

* ``log_px``  (k, B): log p(x | z), the model's pixel likelihood;
* ``log_pz``  (k, B): log p(z) under the prior, every stochastic layer included;
* ``log_qz``  (k, B): log q(z | x), every stochastic layer included;
* ``kl_dims`` (k, B, D): KL per latent dimension, analytic where it has a closed form.

so log p(x, z) - log q(z | x) = log_px + log_pz - log_qz is the importance weight.

For pictures, a model also has a *code*: the latent layer that is traversed, interpolated and
drawn on the manifold (the only layer of a one-layer VAE, the top layer of a hierarchy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vae_train.losses import BernoulliLikelihood, DiagGaussian, standard_normal_log_prob_dims


def repeat_batch(t: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """(B, ...) -> (k * B, ...), sample-major, matching ``z.flatten(0, 1)`` of (k, B, ...)."""
    if t is None or k == 1:
        return t
    return t.unsqueeze(0).expand(k, *t.shape).reshape(k * t.shape[0], *t.shape[1:])


class GaussianVAE(nn.Module):
    """One stochastic layer z with a standard normal prior. Subclasses set ``self.encoder``
    (to 2 * latent_dim numbers) and ``self.decoder`` (to one number per pixel) and say
    whether they are conditional."""

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

    def _y(self, y):
        return y if self.conditional else None

    # -- networks -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> DiagGaussian:
        """q(z|x) (of the first stochastic layer)."""
        mu, logvar = self.encoder_forward(x, self._y(y)).float().chunk(2, dim=-1)
        return DiagGaussian(mu, logvar)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output (one number per pixel) for z of the first stochastic layer."""
        return self.decoder_forward(z, self._y(y)).view(z.shape[0], *self.input_shape)

    def encoder_forward(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def decoder_forward(self, z, y):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- the interface objectives and evaluation use -------------------------------------
    def infer(self, x: torch.Tensor, y: torch.Tensor | None = None, k: int = 1,
              analytic_kl: bool = True, step: int | None = None) -> dict:
        q = self.encode(x, y)
        z = q.rsample(k)                                           # (k, B, D)
        out = self.decode(z.flatten(0, 1), repeat_batch(self._y(y), k))
        log_px = self.likelihood.log_prob(out.view(k, -1, *self.input_shape), x)
        log_pz_dims = standard_normal_log_prob_dims(z)
        log_qz_dims = q.log_prob_dims(z)
        if analytic_kl:
            kl_dims = q.kl_to_standard_normal().unsqueeze(0).expand_as(z)
        else:
            kl_dims = log_qz_dims - log_pz_dims
        return {"log_px": log_px, "log_pz": log_pz_dims.sum(-1), "log_qz": log_qz_dims.sum(-1),
                "kl_dims": kl_dims, "x_out": out}

    def latent_means(self, x: torch.Tensor, y: torch.Tensor | None = None) -> list:
        """E_q[z] of each stochastic layer, for counting active units."""
        return [self.encode(x, y).mu]

    # -- the code: what pictures move through ---------------------------------------------
    @property
    def code_dim(self) -> int:
        return self.latent_dim

    @property
    def code_kl_slice(self) -> slice:
        """Which entries of ``kl_dims`` belong to the code layer."""
        return slice(0, self.latent_dim)

    def code(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean of the code layer."""
        return self.encode(x, y).mu

    def decode_code(self, c: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean image for codes ``c``."""
        return self.likelihood.mean(self.decode(c, y))

    # -- pictures -----------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images of p(x|z) for z drawn from the prior (a CPU generator if given)."""
        z = torch.randn(n, self.code_dim, generator=generator).to(self._device())
        return self.decode_code(z, y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean image of p(x|z) at the posterior mean z."""
        return self.likelihood.mean(self.decode(self.encode(x, y).mu, y))
