"""The objectives: the ELBO (with beta, warm-up, free bits), the beta-VAE capacity form and the
importance-weighted bound, written once against the model contract's ``infer``; and the
objective of a model that brings its own.

Every objective returns a dict of named terms in nats per example (summed over pixels and
latent dimensions, averaged over the batch); ``loss`` is what is minimised.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vae_train.checks import BOOLEAN, Checked, integer, number, one_of
from vae_train.errors import UserError
from vae_train.distributions import (BernoulliLikelihood, DiscretizedGaussian,
                                     DiscretizedLogisticMixture, GaussianLikelihood)
from vae_train.models.base import (Hierarchy, OwnsObjective, layer_slices_of,
                                   schedule_terms as model_schedule_terms)

# Entries of an objective's dict that are settings in force (logged), not loss terms.
SCHEDULE_TERMS = frozenset({"kl_weight", "beta", "warmup", "C", "gamma", "k", "tau"})

# loss.likelihood: auto picks from the data's value kind (Objective.likelihood_for).
LIKELIHOODS = ("bernoulli", "gaussian", "logistic_mixture", "discretized_gaussian", "auto")
DISCRETISED = ("logistic_mixture", "discretized_gaussian")     # need 8-bit images
VALUE_WORDS = {"unit": "real-valued (in [0, 1])", "real": "real-valued (unbounded)",
               "binary": "binary (0/1)"}


class Objective(Checked, nn.Module):
    """What every objective shares: the pixel likelihood it asks the model to use.

    ``forward(model, x, y, step, train, phase)`` returns a dict of named terms in nats per
    example. ``step`` is the global optimizer step: every schedule is a pure function of it,
    so it continues exactly on resume and does not move during validation. ``train=False`` is
    evaluation (validation, test): weights that only ease optimisation (KL warm-up) are at
    their full value, so validation losses compare across epochs; targets that define the
    objective (the capacity C) take their value at ``step`` (at the end when it is None).
    ``phase`` names the parameter group being stepped (models with several; see
    ``vae_train.models.base.ParameterGroups``).
    """

    config_group = "loss"
    checks = {"likelihood": one_of(*LIKELIHOODS), "sigma": number(0, low_open=True),
              "learn_sigma": BOOLEAN, "mixtures": integer(1, what="an integer >= 1")}

    def __init__(self, likelihood: str = "bernoulli", sigma: float = 0.1,
                 learn_sigma: bool = False, mixtures: int = 10):
        super().__init__()
        self.likelihood = likelihood
        self.sigma = float(sigma)
        self.learn_sigma = bool(learn_sigma)
        self.mixtures = int(mixtures)

    def likelihood_for(self, values: str) -> str:
        """The likelihood ``loss.likelihood`` names for data of this value kind (``auto``:
        gaussian for real-valued data, ``real`` or ``unit``; bernoulli for ``8bit`` and
        ``binary`` images)."""
        if self.likelihood != "auto":
            return self.likelihood
        return "gaussian" if values in ("real", "unit") else "bernoulli"

    def make_likelihood(self, channels: int, values: str = "8bit",
                        data_name: str = "this data set") -> nn.Module:
        """p(x | z) per pixel, as the model will use it, for data of ``channels`` channels
        whose values are of kind ``values`` (``DataModule.values``: 8bit, unit, real,
        binary)."""
        name = self.likelihood_for(values)
        if name in DISCRETISED and values != "8bit":
            raise UserError(f"loss.likelihood={name} needs 8-bit images; {data_name} holds "
                            f"{VALUE_WORDS.get(values, values)} values; use "
                            f"loss.likelihood={'bernoulli' if values == 'binary' else 'gaussian'}")
        if name == "gaussian":
            # unbounded data (standardised): the decoder output is the mean itself
            return GaussianLikelihood(self.sigma, self.learn_sigma, channels,
                                      bounded=values != "real")
        if name == "logistic_mixture":
            return DiscretizedLogisticMixture(self.mixtures, channels)
        if name == "discretized_gaussian":
            return DiscretizedGaussian(channels)
        return BernoulliLikelihood()


def layer_kls(model, kl_dims: torch.Tensor) -> torch.Tensor | None:
    """(..., L): the KL of each stochastic layer of a :class:`Hierarchy` model (bottom first)
    from ``kl_dims`` (..., D); None for a model of one layer."""
    if not isinstance(model, Hierarchy):
        return None
    return torch.stack([kl_dims[..., sl].sum(-1)
                        for sl in layer_slices_of(model, kl_dims.shape[-1])], dim=-1)


def layer_terms(layer_kl: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """``kl_1`` .. ``kl_L``: each layer's KL, batch means (logged beside ``kl``)."""
    if layer_kl is None:
        return {}
    means = layer_kl.reshape(-1, layer_kl.shape[-1]).mean(0)
    return {f"kl_{l + 1}": v for l, v in enumerate(means)}


def schedule_terms(model, step) -> dict:
    """The model's own schedules in force at ``step`` (a temperature), to be logged."""
    return {k: torch.tensor(float(v)) for k, v in model_schedule_terms(model, step).items()}


class ModelObjective(Objective):
    """The objective of a model that brings its own (``OwnsObjective``: VQ-VAE, adversarial
    AE, M2): the loss is ``model.loss_terms(x, y, step=, train=, phase=)``. Built by
    ``vae_train.build`` in place of the ``loss`` group's objective, keeping its likelihood."""

    def forward(self, model: OwnsObjective, x, y=None, step=None, train=True, phase=None):
        """``phase=None`` is evaluation: every term, ``loss`` being the stage's headline."""
        return model.loss_terms(x, y, step=step, train=train, phase=phase)


class ELBO(Objective):
    """The negative evidence lower bound, -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)).

    ``beta`` weights the KL term (beta = 1 is the plain ELBO); ``warmup_steps`` ramps it up
    linearly; ``free_bits`` > 0 puts a floor under the KL of each latent dimension (averaged
    over the batch, as Kingma et al. 2016), so the optimiser gains nothing by pushing a
    dimension below it. ``analytic_kl`` uses the closed form where the model has one; false
    uses the single-sample estimate log q(z|x) - log p(z), as the IWAE paper's VAE does.

    For a model of several stochastic layers (:class:`~vae_train.models.base.Hierarchy`) the
    KL of each layer is logged (``kl_1`` .. ``kl_L``, layer 1 nearest the data);
    ``free_bits_layer`` > 0 floors each layer's batch-mean KL instead of each dimension's;
    ``kl_balance`` weighs the layers' KL terms during warm-up in proportion to their KL per
    dimension (batch means, normalised to a mean weight of 1, as NVAE's KL balancing), so a
    layer that holds little information is pressed less to give it up; after warm-up every
    weight is 1, and the objective is the ELBO again.

    Returns a dict of named terms in nats per example; ``loss`` is what is minimised and
    ``elbo`` is the unweighted bound (what a likelihood comparison should use).
    """

    checks = {"beta": number(0), "warmup_steps": integer(0),
              "free_bits": number(0, what="a number >= 0 (nats per dimension)"),
              "free_bits_layer": number(0, what="a number >= 0 (nats per layer)"),
              "kl_balance": BOOLEAN, "analytic_kl": BOOLEAN}

    def __init__(self, beta: float = 1.0, warmup_steps: int = 0, free_bits: float = 0.0,
                 analytic_kl: bool = True, free_bits_layer: float = 0.0,
                 kl_balance: bool = False, **likelihood):
        super().__init__(**likelihood)
        self.beta = float(beta)
        self.warmup_steps = int(warmup_steps)
        self.free_bits = float(free_bits)
        self.analytic_kl = bool(analytic_kl)
        self.free_bits_layer = float(free_bits_layer)
        self.kl_balance = bool(kl_balance)
        if self.free_bits > 0 and self.free_bits_layer > 0:
            raise UserError("loss.free_bits (per dimension) and loss.free_bits_layer (per "
                            "layer) are two floors for the same KL; set one of them to 0")
        if self.kl_balance and self.warmup_steps <= 0:
            raise UserError("loss.kl_balance=true balances the layers during KL warm-up, and "
                            "loss.warmup_steps=0 has none; set loss.warmup_steps (e.g. 10 "
                            "epochs of steps)")

    def warmup(self, step: int | None, train: bool = True) -> float:
        """The warm-up factor in [0, 1] at optimizer step ``step`` (1 in evaluation)."""
        if not train or step is None or self.warmup_steps <= 0:
            return 1.0
        return min(1.0, step / self.warmup_steps)

    def kl_weight(self, step: int | None, train: bool = True) -> float:
        """The KL weight in force at optimizer step ``step``."""
        return self.beta * self.warmup(step, train)

    def kl_terms(self, model, x, y, step=None) -> tuple[torch.Tensor, torch.Tensor,
                                                        torch.Tensor]:
        """(recon per example, KL per example, KL per dimension (B, D)) from one sample."""
        out = model.infer(x, y, k=1, analytic_kl=self.analytic_kl, step=step)
        recon = -out["log_px"][0]
        kl_dims = out["kl_dims"][0]
        kl = kl_dims.sum(-1) if self.analytic_kl else (out["log_qz"] - out["log_pz"])[0]
        return recon, kl, kl_dims

    def penalty(self, kl: torch.Tensor, kl_dims: torch.Tensor, step,
                train: bool = True, layer_kl: torch.Tensor | None = None,
                layer_sizes: list[int] | None = None) -> tuple[torch.Tensor, dict]:
        """The KL part of the loss (a batch mean) and the schedule values to log.
        ``layer_kl`` (B, L): each layer's KL, and ``layer_sizes`` their dimensions, for a model
        of several layers."""
        weight = self.kl_weight(step, train)
        kl_term = kl.mean()
        if self.free_bits > 0:
            kl_term = kl_dims.mean(0).clamp_min(self.free_bits).sum()
        elif layer_kl is not None and (self.free_bits_layer > 0 or self.kl_balance):
            per_layer = layer_kl.mean(0).clamp_min(self.free_bits_layer)
            if self.kl_balance and self.warmup(step, train) < 1.0:
                per_layer = per_layer * self.balance(layer_kl, layer_sizes)
            kl_term = per_layer.sum()
        return weight * kl_term, {"kl_weight": weight, "beta": self.beta,
                                  "warmup": self.warmup(step, train)}

    @staticmethod
    def balance(layer_kl: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """(L,) weights of the layers' KL terms: proportional to each layer's batch-mean KL per
        dimension (``sizes``: the layers' dimensions), plus 0.01 nats so an empty layer keeps
        a small weight, with mean 1; no gradient flows through them."""
        size = torch.tensor(sizes, dtype=layer_kl.dtype, device=layer_kl.device)
        share = layer_kl.detach().abs().mean(0) / size + 0.01
        return share / share.mean()

    def forward(self, model, x: torch.Tensor, y: torch.Tensor | None = None,
                step: int | None = None, train: bool = True, phase: str | None = None
                ) -> dict[str, torch.Tensor]:
        recon, kl, kl_dims = self.kl_terms(model, x, y, step)
        layer_kl = layer_kls(model, kl_dims)
        sizes = [sl.stop - sl.start for sl in layer_slices_of(model, kl_dims.shape[-1])]
        penalty, logged = self.penalty(kl, kl_dims, step, train, layer_kl, sizes)
        terms = {
            "loss": recon.mean() + penalty,
            "recon": recon.mean(),
            "kl": kl.mean(),
            "elbo": -(recon + kl).mean(),
            **layer_terms(layer_kl),
        }
        terms.update({k: torch.tensor(float(v)) for k, v in logged.items()})
        terms.update(schedule_terms(model, step))
        return terms


class BetaVAE(ELBO):
    """beta-VAE (Higgins et al. 2017): the ELBO with beta = 4 by default; or, with
    ``capacity=true``, the capacity-annealed form of Burgess et al. (2018):
    ``recon + gamma * |KL - C|``, where C rises linearly from 0 to ``C_max`` nats over
    ``C_stop_steps`` optimizer steps (a function of the global step)."""

    checks = {"capacity": BOOLEAN, "gamma": number(0),
              "C_max": number(0, what="a number >= 0 (nats)"), "C_stop_steps": integer(0)}

    def __init__(self, beta: float = 4.0, capacity: bool = False, gamma: float = 1000.0,
                 C_max: float = 25.0, C_stop_steps: int = 100000, **kw):
        super().__init__(beta=beta, **kw)
        if capacity and self.free_bits > 0:
            raise UserError("loss.free_bits does not combine with loss.capacity=true (the "
                            "capacity target already keeps the KL up); set one of them")
        if capacity and (self.free_bits_layer > 0 or self.kl_balance):
            raise UserError("loss.free_bits_layer and loss.kl_balance do not combine with "
                            "loss.capacity=true (the capacity target replaces the KL term); "
                            "set loss.capacity=false or drop them")
        self.capacity = bool(capacity)
        self.gamma = float(gamma)
        self.C_max = float(C_max)
        self.C_stop_steps = int(C_stop_steps)

    def C(self, step: int | None) -> float:
        """The capacity target in nats at optimizer step ``step`` (None: its final value)."""
        if step is None or self.C_stop_steps <= 0:
            return self.C_max
        return self.C_max * min(1.0, step / self.C_stop_steps)

    def penalty(self, kl, kl_dims, step, train: bool = True, layer_kl=None, layer_sizes=None):
        if not self.capacity:
            return super().penalty(kl, kl_dims, step, train, layer_kl, layer_sizes)
        c = self.C(step)
        weight = self.gamma * self.warmup(step, train)
        return weight * (kl.mean() - c).abs(), {"kl_weight": weight, "C": c, "gamma": self.gamma,
                                                "warmup": self.warmup(step, train)}


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """The importance-weighted bound per example from log weights of shape (k, B):
    logsumexp_i(log w_i) - log k. With k = 1 it is the single-sample ELBO."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


class IWAE(Objective):
    """The importance-weighted autoencoder bound (Burda et al. 2016) with ``k`` samples.

    log w_i = log p(x, z_i) - log q(z_i | x), z_i ~ q(z|x); the loss is the negative of
    logsumexp_i(log w_i) - log k, averaged over the batch. Also logged, from the same samples:
    ``elbo`` (the mean log weight), ``recon`` (-log p(x|z)) and ``kl`` (log q - log p(z)).
    """

    checks = {"k": integer(1, what="an integer >= 1")}

    def __init__(self, k: int = 5, **kw):
        super().__init__(**kw)
        self.k = int(k)

    def forward(self, model, x: torch.Tensor, y: torch.Tensor | None = None,
                step: int | None = None, train: bool = True, phase: str | None = None
                ) -> dict[str, torch.Tensor]:
        out = model.infer(x, y, k=self.k, analytic_kl=False, step=step)
        log_w = out["log_px"] + out["log_pz"] - out["log_qz"]
        bound = iwae_bound(log_w)
        kl = (out["log_qz"] - out["log_pz"]).mean()
        terms = {
            "loss": -bound.mean(),
            "iwae": bound.mean(),
            "recon": -out["log_px"].mean(),
            "kl": kl,
            "elbo": log_w.mean(),
            "k": torch.tensor(float(self.k)),
            **layer_terms(layer_kls(model, out["kl_dims"])),
        }
        terms.update(schedule_terms(model, step))
        return terms
