"""Adversarial autoencoder (Makhzani et al. 2016).

A deterministic encoder and a decoder learn to reconstruct; a discriminator on latent codes learns
to tell the encoder's codes from samples of the prior, and the encoder (as generator) learns to
fool it, which shapes the aggregate posterior q(z) into the prior. Each batch takes three
optimizer steps, one per parameter group, in this order:

1. ``autoencoder`` (encoder + decoder): the reconstruction loss -log p(x|z), nats per example;
2. ``discriminator``: binary cross-entropy, prior samples labelled 1, codes labelled 0;
3. ``generator`` (encoder): binary cross-entropy of the codes labelled 1.

Priors: ``gaussian`` (standard normal) and ``mixture``: 10 Gaussians on a circle in the first
two latent dimensions, each stretched along its radius (the paper's Figure 4 uses such a
mixture with a 2-D code), standard normal in any further dimensions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vae_train.checks import int_list, integer, one_of
from vae_train.errors import UserError
from vae_train.models.base import (ExtraMetrics, Model, OwnsObjective, ParameterGroups,
                                   SampledPrior)
from vae_train.nets import mlp
from vae_train.nets.mlp import ACTIVATION

PRIORS = ("gaussian", "mixture")


class MixturePrior:
    """``components`` Gaussians with means on a circle of ``radius`` in dims 0 and 1, standard
    deviation ``radial_std`` along the radius and ``tangential_std`` across it."""

    def __init__(self, components: int = 10, radius: float = 3.0, radial_std: float = 0.5,
                 tangential_std: float = 0.1):
        self.components, self.radius = components, radius
        self.radial_std, self.tangential_std = radial_std, tangential_std

    def sample(self, n: int, dim: int, generator=None, component=None) -> torch.Tensor:
        c = (torch.randint(0, self.components, (n,), generator=generator)
             if component is None else component.cpu())
        angle = 2 * math.pi * c.float() / self.components
        u = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)          # radial direction
        v = torch.stack([-torch.sin(angle), torch.cos(angle)], dim=1)         # tangential
        e = torch.randn(n, dim, generator=generator)
        z = e.clone()
        z[:, :2] = (u * (self.radius + self.radial_std * e[:, :1])
                    + v * (self.tangential_std * e[:, 1:2]))
        return z


class AAE(Model, OwnsObjective, ParameterGroups, ExtraMetrics, SampledPrior):
    phases = ("autoencoder", "discriminator", "generator")
    objective_doc = "reconstruction + adversarial regularisation of the codes"
    checks = {"latent_dim": integer(1), "hidden_dims": int_list(),
              "disc_hidden_dims": int_list(), "activation": ACTIVATION,
              "prior": one_of(*PRIORS)}

    def __init__(self, input_shape, latent_dim: int = 8, hidden_dims=(512, 512),
                 disc_hidden_dims=(512, 512), activation: str = "relu",
                 prior: str = "gaussian", num_classes: int = 0, likelihood=None):
        if prior == "mixture" and int(latent_dim) < 2:
            raise UserError(f"model.latent_dim={latent_dim} is invalid with model.prior=mixture: "
                            "the mixture lives in the first two dimensions; use latent_dim >= 2")
        super().__init__(input_shape, num_classes, likelihood)
        self.latent_dim = int(latent_dim)
        self.prior = prior
        self.mixture = MixturePrior() if prior == "mixture" else None
        d = math.prod(self.input_shape)
        self.encoder = mlp(d, hidden_dims, self.latent_dim, activation)
        self.decoder = mlp(self.latent_dim, list(hidden_dims)[::-1],
                           math.prod(self.output_shape), activation)
        self.discriminator = mlp(self.latent_dim, disc_hidden_dims, 1, activation)

    def parameter_groups(self) -> dict:
        return {"autoencoder": [*self.encoder.parameters(), *self.decoder.parameters(),
                                *self.likelihood.parameters()],
                "discriminator": list(self.discriminator.parameters()),
                "generator": list(self.encoder.parameters())}

    # -- networks -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1)).float()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(z.shape[0], *self.output_shape)

    def prior_sample(self, n: int, generator=None) -> torch.Tensor:
        if self.mixture is not None:
            z = self.mixture.sample(n, self.latent_dim, generator)
        else:
            z = torch.randn(n, self.latent_dim, generator=generator)
        return z.to(self.device)

    # -- the objective ------------------------------------------------------------------------
    def _recon(self, x, z):
        return -self.likelihood.log_prob(self.decode(z), x)          # (B,) nats

    def _disc_terms(self, z_fake: torch.Tensor) -> dict:
        z_real = self.prior_sample(len(z_fake))
        real, fake = self.discriminator(z_real).float(), self.discriminator(z_fake).float()
        loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        acc = 0.5 * ((real > 0).float().mean() + (fake < 0).float().mean())
        return {"disc_loss": loss, "disc_acc": acc}

    def _gen_loss(self, z: torch.Tensor) -> torch.Tensor:
        fake = self.discriminator(z).float()
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))

    def loss_terms(self, x, y=None, step=None, train=True, phase=None) -> dict:
        if phase == "autoencoder":
            recon = self._recon(x, self.encode(x)).mean()
            return {"loss": recon, "recon": recon}
        if phase == "discriminator":
            terms = self._disc_terms(self.encode(x).detach())
            return {"loss": terms["disc_loss"], **terms}
        if phase == "generator":
            gen = self._gen_loss(self.encode(x))
            return {"loss": gen, "gen_loss": gen}
        z = self.encode(x)                                            # evaluation: every term
        recon = self._recon(x, z).mean()
        return {"loss": recon, "recon": recon, **self._disc_terms(z), "gen_loss": self._gen_loss(z)}

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_batch(self, x, y) -> dict:
        z = self.encode(x)
        terms = self._disc_terms(z)
        return {"recon": self._recon(x, z).sum(),
                "disc_acc": terms["disc_acc"] * len(x),
                "code_norm": z.norm(dim=1).sum()}

    def evaluate_summary(self, sums: dict, n: int) -> dict:
        return {"recon": sums["recon"].item() / n,
                "disc_acc": sums["disc_acc"].item() / n,
                "mean_code_norm": sums["code_norm"].item() / n}

    # -- the code, reconstructions and samples -------------------------------------------------
    @property
    def code_dim(self) -> int:
        return self.latent_dim

    def code(self, x, y=None) -> torch.Tensor:
        return self.encode(x)

    def decode_code(self, c, y=None) -> torch.Tensor:
        return self.likelihood.mean(self.decode(c))

    @torch.no_grad()
    def sample(self, n: int, y=None, generator=None) -> torch.Tensor:
        """Mean images of p(x|z) for z drawn from the prior."""
        return self.decode_code(self.prior_sample(n, generator))

    @torch.no_grad()
    def reconstruct(self, x, y=None) -> torch.Tensor:
        return self.decode_code(self.encode(x))

    @property
    def prior_span(self) -> float:
        return self.mixture.radius + 3 * self.mixture.radial_std if self.mixture else 2.5
