"""Distributions, likelihoods and the ELBO objective.

Every number here is in nats per example: log-densities are summed over pixels and latent
dimensions, then averaged over the batch by the objective.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vae_train.errors import UserError

LOG_2PI = math.log(2 * math.pi)


def _sum_except_batch(t: torch.Tensor, batch_dims: int = 1) -> torch.Tensor:
    return t.flatten(batch_dims).sum(-1)


class DiagGaussian:
    """A diagonal Gaussian over vectors (the last dimension), reparameterised.

    A thin equivalent of ``Independent(Normal(mu, sigma), 1)`` without argument validation,
    so it costs nothing in the training step.
    """

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        self.mu = mu
        self.logvar = logvar

    @classmethod
    def standard(cls, shape, device=None, dtype=None) -> "DiagGaussian":
        zeros = torch.zeros(shape, device=device, dtype=dtype)
        return cls(zeros, zeros)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mu.shape, device=self.mu.device, dtype=self.mu.dtype,
                          generator=generator)
        return self.mu + eps * self.std

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z), summed over the last dimension."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu) ** 2 * torch.exp(-self.logvar)).sum(-1)

    def kl_to_standard_normal(self) -> torch.Tensor:
        """Analytic KL(q || N(0, I)) per latent dimension (last dim kept)."""
        return 0.5 * (self.mu ** 2 + torch.exp(self.logvar) - 1.0 - self.logvar)


class _BernoulliNLL(torch.autograd.Function):
    """Per-pixel -log Bernoulli(x | sigmoid(o)) = relu(o) - o x + log(1 + exp(-|o|)).

    The same values as ``F.binary_cross_entropy_with_logits``, about 3.5x faster forward and
    backward on the CPU: ATen's log_sigmoid/log1p are not vectorised there, exp and log are,
    and the backward is one fused expression, (sigmoid(o) - x) * grad. The log(1 + e) form
    differs from log1p(e) by under 1e-7 nats per pixel.
    """

    @staticmethod
    def forward(ctx, o, x):
        ctx.save_for_backward(o, x)
        return o.clamp_min(0).sub_(o * x).add_(torch.exp(-o.abs()).add_(1).log_())

    @staticmethod
    def backward(ctx, grad):
        o, x = ctx.saved_tensors
        return (torch.sigmoid(o) - x).mul_(grad), None


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel Bernoulli negative log-likelihood of ``x`` in [0, 1] given logits."""
    return _BernoulliNLL.apply(logits, x)


class BernoulliLikelihood(nn.Module):
    """p(x|z) = Bernoulli(sigmoid(logits)) per pixel, applied to grey levels in [0, 1].

    For grey levels this is the classic PyTorch example's summed binary cross-entropy; for
    binarized data it is the exact Bernoulli log-likelihood.
    """

    name = "bernoulli"

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -_sum_except_batch(bernoulli_nll(out.float(), x.float()))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out.float())


class GaussianLikelihood(nn.Module):
    """p(x|z) = N(sigmoid(out), sigma^2) per pixel; sigma fixed or learned per channel."""

    name = "gaussian"

    def __init__(self, sigma: float = 0.1, learn_sigma: bool = False, channels: int = 1):
        super().__init__()
        log_sigma = torch.full((channels,), math.log(sigma))
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean = torch.sigmoid(out.float())
        shape = (1, -1) + (1,) * (x.dim() - 2)
        log_sigma = self.log_sigma.clamp(min=math.log(1e-3)).view(shape)
        ll = -0.5 * LOG_2PI - log_sigma - 0.5 * ((x - mean) * torch.exp(-log_sigma)) ** 2
        return _sum_except_batch(ll)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out.float())


class ELBO(nn.Module):
    """The negative evidence lower bound, -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)).

    ``beta`` weights the KL term (beta = 1 is the plain ELBO). With ``warmup_steps > 0`` the
    KL weight rises linearly from 0 to ``beta`` over that many optimizer steps; the factor is
    derived from the global step, so it survives a resume.

    Returns a dict of named terms in nats per example; ``loss`` is what is minimised and
    ``elbo`` is the unweighted bound (what a likelihood comparison should use).
    """

    def __init__(self, beta: float = 1.0, likelihood: str = "bernoulli", sigma: float = 0.1,
                 learn_sigma: bool = False, warmup_steps: int = 0):
        super().__init__()
        self.beta = float(beta)
        self.likelihood = likelihood
        self.sigma = float(sigma)
        self.learn_sigma = bool(learn_sigma)
        self.warmup_steps = int(warmup_steps)

    def make_likelihood(self, channels: int) -> nn.Module:
        if self.likelihood == "bernoulli":
            return BernoulliLikelihood()
        if self.likelihood == "gaussian":
            return GaussianLikelihood(self.sigma, self.learn_sigma, channels)
        raise UserError(f"loss.likelihood={self.likelihood!r} is not known; "
                        "use loss.likelihood=bernoulli or loss.likelihood=gaussian")

    def kl_weight(self, step: int | None) -> float:
        """The KL weight in force at optimizer step ``step`` (None: evaluation, full beta)."""
        if step is None or self.warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, step / self.warmup_steps)

    def forward(self, model, x: torch.Tensor, y: torch.Tensor | None = None,
                step: int | None = None) -> dict[str, torch.Tensor]:
        out = model(x, y)
        recon = -model.likelihood.log_prob(out["x_out"], x)
        kl = out["kl"]
        weight = self.kl_weight(step)
        loss = recon + weight * kl
        return {
            "loss": loss.mean(),
            "recon": recon.mean(),
            "kl": kl.mean(),
            "elbo": -(recon + kl).mean(),
            "kl_weight": torch.tensor(weight),
        }
