"""Discrete-latent VAE with the Gumbel-softmax (Concrete) relaxation.

Jang, Gu & Poole (2017), "Categorical Reparameterization with Gumbel-Softmax", and Maddison,
Mnih & Teh (2017), "The Concrete Distribution". The latent code is ``N`` categorical variables
with ``K`` classes each, c = (c_1, ..., c_N), under a uniform prior p(c_n = k) = 1/K; the
encoder (an MLP) gives q(c_n | x) = softmax(logits_n), the decoder (the mirror MLP) maps the
N one-hot vectors, concatenated, to pixels.

Training (``self.training``) decodes *relaxed* samples
    z_n = softmax((log q(c_n|x) + g_n) / tau),    g_n ~ Gumbel(0, 1) i.i.d. per class,
whose gradient reaches the encoder by reparameterisation. With ``hard=true`` the forward pass
uses the one-hot argmax of z_n instead (straight-through: backward through the relaxed z_n).
The temperature is a pure function of the global optimizer step (so a resumed run continues it):
    tau(step) = max(tau_min, tau0 * exp(-anneal_rate * step)).

Evaluation (``not self.training``) draws *hard* one-hot samples c ~ q(c|x) (Gumbel-max, exact),
so log p(x|c) + log p(c) - log q(c|x) is a valid importance weight of the discrete model and the
importance-sampled NLL of ``vae_train.evaluate`` (and ``loss=iwae`` on validation/test) is a
real bound on -log p(x) = -log sum_c p(x|c) p(c).

``infer`` returns what every objective needs (see ``models/base.py``):

* ``log_pz`` = -N log K (the uniform prior of any one-hot code);
* ``log_qz`` = sum_n sum_k z_nk log q_nk: for a one-hot sample (evaluation, or ``hard=true``)
  this is exactly log q(c|x); for a relaxed training sample it is the cross-entropy surrogate
  (not the Concrete density), as in Jang et al.;
* ``kl_dims`` (k, B, N): per variable, analytic KL(q(c_n|x) || uniform) = sum_k q log(q K)
  (0 for a uniform q, log K for a one-hot q); with ``analytic_kl=false`` the single-sample
  estimate log q - log p of each variable.

Active units (``latent_means``): E_q of the one-hot code, i.e. the N*K posterior class
probabilities; a class entry is active when its probability varies across images
(Var_x > threshold), so ``active units`` counts class entries out of N*K.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vae_train.checks import BOOLEAN, int_list, integer, number
from vae_train.errors import UserError
from vae_train.models.base import (CategoricalCode, HasCode, Inference, LatentVariable, Model,
                                   Scheduled)
from vae_train.nets import mlp
from vae_train.nets.mlp import ACTIVATION


def gumbel_noise(shape, like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise, -log E with E ~ Exp(1) (E kept away from 0)."""
    e = torch.empty(shape, device=like.device, dtype=like.dtype).exponential_()
    return -torch.log(e.clamp_min(torch.finfo(like.dtype).tiny))


def categorical_kl_to_uniform(log_q: torch.Tensor) -> torch.Tensor:
    """KL(q || uniform over K) = sum_k q_k log(q_k K) over the last dim, from log q."""
    return (log_q.exp() * (log_q + math.log(log_q.shape[-1]))).sum(-1)


class GumbelVAE(Model, LatentVariable, HasCode, Scheduled, CategoricalCode):
    checks = {"num_latents": integer(1), "num_categories": integer(2),
              "hidden_dims": int_list(), "activation": ACTIVATION,
              "tau0": number(0, low_open=True), "tau_min": number(0, low_open=True),
              "anneal_rate": number(0), "hard": BOOLEAN}

    def __init__(self, input_shape, num_latents: int = 30, num_categories: int = 10,
                 hidden_dims=(512, 256), activation: str = "relu", tau0: float = 1.0,
                 tau_min: float = 0.5, anneal_rate: float = 3e-5, hard: bool = False,
                 num_classes: int = 0, likelihood: nn.Module | None = None):
        if tau_min > tau0:
            raise UserError(f"model.tau_min={tau_min!r} is invalid: it must be a number in "
                            f"(0, tau0={tau0}]")
        super().__init__(input_shape, num_classes, likelihood)
        self.num_latents, self.num_categories = int(num_latents), int(num_categories)
        self.tau0, self.tau_min = float(tau0), float(tau_min)
        self.anneal_rate, self.hard = float(anneal_rate), bool(hard)
        d = math.prod(self.input_shape)
        code = self.num_latents * self.num_categories
        self.encoder = mlp(d, hidden_dims, code, activation)
        self.decoder = mlp(code, list(hidden_dims)[::-1], math.prod(self.output_shape),
                           activation)

    # -- temperature ------------------------------------------------------------------------
    def temperature(self, step: int | None) -> float:
        """tau at optimizer step ``step`` (None: its final value, tau_min)."""
        if step is None:
            return self.tau_min
        return max(self.tau_min, self.tau0 * math.exp(-self.anneal_rate * float(step)))

    def schedule_terms(self, step: int | None) -> dict:
        """Settings in force at ``step``, for the objective to log next to its terms."""
        return {"tau": self.temperature(step)}

    # -- networks ---------------------------------------------------------------------------
    def log_q(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log q(c_n = k | x): (B, N, K)."""
        logits = self.encoder(x.flatten(1)).float()
        return F.log_softmax(logits.view(len(x), self.num_latents, self.num_categories), -1)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output (``output_shape`` per example: the likelihood's parameters) for
        codes z of shape (B, N, K) or (B, N*K)."""
        return self.decoder(z.reshape(z.shape[0], -1)).view(z.shape[0], *self.output_shape)

    def one_hot(self, c: torch.Tensor) -> torch.Tensor:
        """Class indices (..., N) -> one-hot codes (..., N, K) as floats."""
        return F.one_hot(c.long(), self.num_categories).float()

    def draw(self, log_q: torch.Tensor, k: int, step: int | None) -> torch.Tensor:
        """k samples of the code, (k, B, N, K): relaxed or straight-through hard at tau(step)
        in training, exactly one-hot c ~ q(c|x) in evaluation."""
        noisy = log_q.unsqueeze(0) + gumbel_noise((k, *log_q.shape), log_q)
        if not self.training:
            return self.one_hot(noisy.argmax(-1))                  # Gumbel-max: exact
        soft = torch.softmax(noisy / self.temperature(step), -1)
        if not self.hard:
            return soft
        hard = self.one_hot(soft.argmax(-1))
        return hard - soft.detach() + soft                       # forward hard, backward soft

    # -- the interface objectives and evaluation use ----------------------------------------
    def infer(self, x: torch.Tensor, y: torch.Tensor | None = None, k: int = 1,
              analytic_kl: bool = True, step: int | None = None) -> Inference:
        log_q = self.log_q(x)                                      # (B, N, K)
        z = self.draw(log_q, k, step)                              # (k, B, N, K)
        out = self.decode(z.flatten(0, 1))
        log_px = self.likelihood.log_prob(out.view(k, len(x), *self.output_shape), x)
        log_qz_dims = (z * log_q).sum(-1)                          # (k, B, N)
        log_pz_dim = -math.log(self.num_categories)
        if analytic_kl:
            kl_dims = categorical_kl_to_uniform(log_q).unsqueeze(0).expand_as(log_qz_dims)
        else:
            kl_dims = log_qz_dims - log_pz_dim
        log_pz = torch.full_like(log_px, self.num_latents * log_pz_dim)
        return {"log_px": log_px, "log_pz": log_pz, "log_qz": log_qz_dims.sum(-1),
                "kl_dims": kl_dims, "x_out": out}

    def latent_means(self, x: torch.Tensor, y: torch.Tensor | None = None) -> list:
        """E_q of the one-hot code: the class probabilities, (B, N*K)."""
        return [self.log_q(x).exp().flatten(1)]

    # -- the code ---------------------------------------------------------------------------
    @property
    def code_dim(self) -> int:
        return self.num_latents * self.num_categories

    @property
    def code_kl_slice(self) -> slice:
        return slice(0, self.num_latents)

    def code(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean of the one-hot code: class probabilities, (B, N*K)."""
        return self.log_q(x).exp().flatten(1)

    def latents(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        """q(c_n = k | x) as ``probs`` (B, N, K), the most probable classes as ``mode``
        (B, N), and the code (the probabilities flattened)."""
        probs = self.log_q(x).exp()
        return {"probs": probs, "mode": probs.argmax(-1), "code": probs.flatten(1)}

    def mode(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class of each variable, (B, N)."""
        return self.log_q(x).argmax(-1)

    def decode_code(self, c: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images for codes (B, N*K) or (B, N, K)."""
        return self.likelihood.mean(self.decode(c))

    def decode_classes(self, c: torch.Tensor) -> torch.Tensor:
        """Mean images for class indices ``c`` (B, N)."""
        return self.decode_code(self.one_hot(c))

    # -- reconstructions and samples -----------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images for codes drawn from the uniform prior (a CPU generator if given)."""
        c = torch.randint(self.num_categories, (n, self.num_latents), generator=generator)
        return self.decode_code(self.one_hot(c.to(self.device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean image at the most probable code (argmax of each variable)."""
        return self.decode_code(self.one_hot(self.mode(x)))

    @torch.no_grad()
    def variable_kl(self, x: torch.Tensor) -> torch.Tensor:
        """Mean KL(q(c_n|x) || uniform) per variable over a batch, (N,)."""
        return categorical_kl_to_uniform(self.log_q(x)).mean(0)
