"""Hierarchical VAE with two stochastic layers (the IWAE paper's two-layer architecture).

Inference  x -> z1 -> z2:   q(z1 | x) q(z2 | z1)
Generation z2 -> z1 -> x:   p(z2) = N(0, I), p(z1 | z2), p(x | z1)

Every conditional is a diagonal Gaussian whose parameters come from an MLP (tanh by default).
Defaults follow Burda et al.: z1 has 100 units and z2 50, with two deterministic layers of 100
units between x and z1 and two of 50 between z1 and z2. The KL and the importance weights use
both layers; pictures move through the top layer z2 (the "code").
"""

from __future__ import annotations

import math

import torch

from vae_train.checks import int_list, integer
from vae_train.distributions import DiagGaussian, standard_normal_log_prob_dims
from vae_train.models.base import Hierarchy
from vae_train.models.gaussian import GaussianVAE
from vae_train.nets import mlp
from vae_train.nets.mlp import ACTIVATION


class HVAE(GaussianVAE, Hierarchy):
    checks = {"latent_dim2": integer(1), "hidden_dims": int_list(), "hidden_dims2": int_list(),
              "activation": ACTIVATION}

    def __init__(self, input_shape, latent_dim: int = 100, latent_dim2: int = 50,
                 hidden_dims=(100, 100), hidden_dims2=(50, 50), activation: str = "tanh",
                 num_classes: int = 0, likelihood=None):
        super().__init__(input_shape, latent_dim, num_classes, likelihood)
        d = math.prod(self.input_shape)
        self.latent_dim2 = int(latent_dim2)
        l1, l2 = self.latent_dim, self.latent_dim2
        self.encoder = mlp(d, hidden_dims, 2 * l1, activation)                # q(z1 | x)
        self.encoder2 = mlp(l1, hidden_dims2, 2 * l2, activation)             # q(z2 | z1)
        self.prior1 = mlp(l2, list(hidden_dims2)[::-1], 2 * l1, activation)   # p(z1 | z2)
        self.decoder = mlp(l1, list(hidden_dims)[::-1], math.prod(self.output_shape),
                           activation)                                        # p(x | z1)

    def encoder_forward(self, x, y):
        return self.encoder(x.flatten(1))

    def decoder_forward(self, z, y):
        return self.decoder(z)

    @staticmethod
    def _gaussian(params: torch.Tensor) -> DiagGaussian:
        mu, logvar = params.float().chunk(2, dim=-1)
        return DiagGaussian(mu, logvar)

    def q2(self, z1: torch.Tensor) -> DiagGaussian:
        return self._gaussian(self.encoder2(z1))

    def p1(self, z2: torch.Tensor) -> DiagGaussian:
        return self._gaussian(self.prior1(z2))

    def infer(self, x, y=None, k: int = 1, analytic_kl: bool = True, step=None) -> dict:
        q1 = self.encode(x)
        z1 = q1.rsample(k)                                  # (k, B, L1)
        q2 = self.q2(z1)
        z2 = q2.rsample()                                   # (k, B, L2)
        p1 = self.p1(z2)
        out = self.decode(z1.flatten(0, 1))
        log_px = self.likelihood.log_prob(out.view(k, -1, *self.output_shape), x)
        lq1, lq2 = q1.log_prob_dims(z1), q2.log_prob_dims(z2)
        lp1, lp2 = p1.log_prob_dims(z1), standard_normal_log_prob_dims(z2)
        # log q(z1|x) - log p(z1|z2) has no closed form (z2 is sampled); the top layer's KL
        # given z1 does: KL(q(z2|z1) || N(0, I)).
        kl2 = q2.kl_to_standard_normal() if analytic_kl else lq2 - lp2
        return {"log_px": log_px, "log_pz": lp1.sum(-1) + lp2.sum(-1),
                "log_qz": lq1.sum(-1) + lq2.sum(-1), "kl_dims": torch.cat([lq1 - lp1, kl2], -1),
                "x_out": out}

    def latent_means(self, x, y=None, samples: int = 32) -> list:
        """E_q[z1] exactly; E_q[z2] = E_q(z1|x)[mean of q(z2|z1)] from ``samples`` draws of z1."""
        q1 = self.encode(x)
        return [q1.mu, self.q2(q1.rsample(samples)).mu.mean(0)]

    @property
    def code_dim(self) -> int:
        return self.latent_dim2

    @property
    def code_kl_slice(self) -> slice:
        return slice(self.latent_dim, self.latent_dim + self.latent_dim2)

    def code(self, x, y=None):
        return self.q2(self.encode(x).mu).mu

    def decode_code(self, c, y=None):
        return self.likelihood.mean(self.decode(self.p1(c).mu))

    def latents(self, x, y=None) -> dict:
        """q(z1 | x) as ``mean``/``logvar``; q(z2 | z1) at the mean of z1 as ``mean2``/
        ``logvar2`` (its mean is the code)."""
        q1 = self.encode(x)
        q2 = self.q2(q1.mu)
        return {"mean": q1.mu, "logvar": q1.logvar, "mean2": q2.mu, "logvar2": q2.logvar,
                "code": q2.mu}

    @property
    def layer_slices(self) -> list:
        return [slice(0, self.latent_dim), self.code_kl_slice]

    def layer_noise(self, n: int, generator: torch.Generator | None = None) -> list:
        z2 = torch.randn(n, self.latent_dim2, generator=generator)     # the top drawn first
        return [torch.randn(n, self.latent_dim, generator=generator), z2]

    @torch.no_grad()
    def sample_from_noise(self, noise: list) -> torch.Tensor:
        """z2 = its noise, z1 = the mean of p(z1 | z2) plus its std times its noise."""
        eps1, z2 = (e.to(self.device) for e in noise)
        p1 = self.p1(z2)
        return self.likelihood.mean(self.decode(p1.mu + eps1 * p1.std))

    @torch.no_grad()
    def sample(self, n: int, y=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """z2 ~ N(0, I), z1 ~ p(z1 | z2), then the mean image of p(x | z1)."""
        eps1, z2 = self.layer_noise(n, generator)
        return self.sample_from_noise([eps1, z2])
