"""Distributions and pixel likelihoods, written for speed in the training step.

Every log-density is in nats: summed over pixels (C, H, W) for a likelihood, per coordinate
(``*_dims``) or summed over the last dimension for a latent distribution.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def _sum_pixels(t: torch.Tensor) -> torch.Tensor:
    """Sum over the last three dims (C, H, W): (B, C, H, W) -> (B,), (k, B, C, H, W) -> (k, B)."""
    return t.flatten(-3).sum(-1)


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

    def rsample(self, k: int | None = None):
        """One sample per distribution (``k=None``), or ``k`` stacked in a new first dim."""
        shape = self.mu.shape if k is None else (k, *self.mu.shape)
        eps = torch.randn(shape, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + eps * self.std

    def log_prob_dims(self, z: torch.Tensor) -> torch.Tensor:
        """log density of each coordinate (nothing summed)."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu) ** 2 * torch.exp(-self.logvar))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z), summed over the last dimension."""
        return self.log_prob_dims(z).sum(-1)

    def kl_to_standard_normal(self) -> torch.Tensor:
        """Analytic KL(q || N(0, I)) per latent dimension (last dim kept)."""
        return 0.5 * (self.mu ** 2 + torch.exp(self.logvar) - 1.0 - self.logvar)


def standard_normal_log_prob_dims(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (LOG_2PI + z ** 2)


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


# Factors of 1 + exp(-|o|) lie in (1, 2]: a product of up to 126 of them stays below 2^126,
# inside float32's range, so whole groups of pixels share one log.
_LOG_GROUP = 120


def _sum_log_small(a: torch.Tensor) -> torch.Tensor:
    """sum(log(a), -1) for 1 < a <= 2, as the log of products over groups of at most
    ``_LOG_GROUP`` entries: one log per group instead of one per entry. Each product's
    relative rounding error is under 120 * 2^-24 (7e-6), so the result is within about
    1e-5 nats of the entry-wise sum (itself rounded to float32)."""
    d = a.shape[-1]
    groups = -(-d // _LOG_GROUP)
    size = -(-d // groups)
    whole = (d // size) * size
    total = a[..., :whole].unflatten(-1, (whole // size, size)).prod(-1).log_().sum(-1)
    if whole < d:
        total += a[..., whole:].prod(-1).log_()
    return total


def bernoulli_log_prob_sum(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum over the last dim of log Bernoulli(x | sigmoid(out)), without autograd: for
    evaluation, where it is most of the time after the decoder's matmuls.

    log p = sum_d (x_d o_d - relu(o_d)) - sum_d log(1 + exp(-|o_d|)): two passes that write
    (|o| and relu), in-place updates, and one log per group of pixels (``_sum_log_small``)
    in place of one per pixel; about 2x faster than ``bernoulli_nll`` on the CPU."""
    e = out.abs().neg_().exp_().add_(1)                      # 1 + exp(-|o|) in (1, 2]
    lin = out.clamp_min(0).addcmul_(out, x, value=-1)        # relu(o) - x o
    return lin.sum(-1).neg_().sub_(_sum_log_small(e))


class BernoulliLikelihood(nn.Module):
    """p(x|z) = Bernoulli(sigmoid(logits)) per pixel, applied to grey levels in [0, 1].

    ``log_prob(out, x)`` sums over (C, H, W); ``out`` may carry a leading sample dimension,
    (k, B, C, H, W) against x of (B, C, H, W), without copying x.

    For grey levels this is the classic PyTorch example's summed binary cross-entropy; for
    binarized data it is the exact Bernoulli log-likelihood.
    """

    name = "bernoulli"

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and out.requires_grad):
            o, xf = out.float().flatten(-3), x.float().flatten(-3)
            if torch.broadcast_shapes(o.shape, xf.shape) == o.shape:
                return bernoulli_log_prob_sum(o, xf)                # no gradient: faster
        return -_sum_pixels(bernoulli_nll(out.float(), x.float()))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out.float())


class GaussianLikelihood(nn.Module):
    """p(x|z) = N(sigmoid(out), sigma^2) per pixel; sigma fixed or learned per channel."""

    name = "gaussian"
    squash = staticmethod(torch.sigmoid)  # decoder output -> mean

    def __init__(self, sigma: float = 0.1, learn_sigma: bool = False, channels: int = 1):
        super().__init__()
        log_sigma = torch.full((channels,), math.log(sigma))
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean = self.squash(out.float())
        log_sigma = self.log_sigma.clamp(min=math.log(1e-3)).view(-1, 1, 1)   # per channel
        ll = -0.5 * LOG_2PI - log_sigma - 0.5 * ((x - mean) * torch.exp(-log_sigma)) ** 2
        return _sum_pixels(ll)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self.squash(out.float())
