"""One stochastic layer z with a diagonal Gaussian posterior and a standard normal prior: what
``vae``, ``conv_vae``, ``cvae`` and ``rnn_vae`` share (``hvae`` adds a layer on top)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vae_train.checks import integer
from vae_train.distributions import DiagGaussian, standard_normal_log_prob_dims
from vae_train.models.base import HasCode, Inference, LatentVariable, Model


def repeat_batch(t: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """(B, ...) -> (k * B, ...), sample-major, matching ``z.flatten(0, 1)`` of (k, B, ...)."""
    if t is None or k == 1:
        return t
    return t.unsqueeze(0).expand(k, *t.shape).reshape(k * t.shape[0], *t.shape[1:])


class GaussianVAE(Model, LatentVariable, HasCode):
    """Subclasses set the networks behind :meth:`encoder_forward` (to 2 * latent_dim numbers:
    mean and log-variance) and :meth:`decoder_forward` (to ``prod(output_shape)`` numbers:
    the likelihood's parameters per pixel), and say whether they are ``conditional``."""

    checks = {"latent_dim": integer(1)}

    def __init__(self, input_shape, latent_dim: int, num_classes: int = 0, likelihood=None):
        super().__init__(input_shape, num_classes, likelihood)
        self.latent_dim = int(latent_dim)

    # -- conditioning -------------------------------------------------------------------
    def _onehot(self, y: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """The condition vector: the one-hot class of (B,) labels, or (B, A) multi-hot
        attribute labels (dataset=celeba with attributes) as they are."""
        if y is None:
            raise ValueError(f"{type(self).__name__} is conditional: it needs class labels y")
        if y.dim() == 2:
            return y.to(like.dtype)
        return F.one_hot(y.long(), self.num_classes).to(like.dtype)

    def _y(self, y):
        return y if self.conditional else None

    # -- networks -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> DiagGaussian:
        """q(z|x) (of the first stochastic layer)."""
        mu, logvar = self.encoder_forward(x, self._y(y)).float().chunk(2, dim=-1)
        return DiagGaussian(mu, logvar)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output (the likelihood's parameters, ``output_shape`` per example) for z
        of the first stochastic layer."""
        return self.decoder_forward(z, self._y(y)).view(z.shape[0], *self.output_shape)

    def encoder_forward(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def decoder_forward(self, z, y):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- the likelihood bound -----------------------------------------------------------
    def infer(self, x: torch.Tensor, y: torch.Tensor | None = None, k: int = 1,
              analytic_kl: bool = True, step: int | None = None) -> Inference:
        q = self.encode(x, y)
        z = q.rsample(k)                                           # (k, B, D)
        out = self.decode(z.flatten(0, 1), repeat_batch(self._y(y), k))
        log_px = self.likelihood.log_prob(out.view(k, -1, *self.output_shape), x)
        log_pz_dims = standard_normal_log_prob_dims(z)
        log_qz_dims = q.log_prob_dims(z)
        if analytic_kl:
            kl_dims = q.kl_to_standard_normal().unsqueeze(0).expand_as(z)
        else:
            kl_dims = log_qz_dims - log_pz_dims
        return {"log_px": log_px, "log_pz": log_pz_dims.sum(-1), "log_qz": log_qz_dims.sum(-1),
                "kl_dims": kl_dims, "x_out": out}

    def latent_means(self, x: torch.Tensor, y: torch.Tensor | None = None) -> list:
        return [self.encode(x, y).mu]

    @property
    def code_kl_slice(self) -> slice:
        return slice(0, self.latent_dim)

    # -- the code -------------------------------------------------------------------------
    @property
    def code_dim(self) -> int:
        return self.latent_dim

    def code(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean of the code layer."""
        return self.encode(x, y).mu

    def decode_code(self, c: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.likelihood.mean(self.decode(c, y))

    def latents(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        """The mean and log-variance of q(z | x) (and the code: the mean)."""
        q = self.encode(x, y)
        return {"mean": q.mu, "logvar": q.logvar, **super().latents(x, y)}

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.code_dim, generator=generator).to(self.device)
        return self.decode_code(z, y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.likelihood.mean(self.decode(self.encode(x, y).mu, y))
