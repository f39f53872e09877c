"""The semi-supervised VAE "M2" (Kingma, Rezende, Mohamed & Welling 2014).

Generative model   p(y) = uniform over K classes,  p(z) = N(0, I),  p(x | y, z)  (an MLP)
Inference          q(y | x)  (an MLP classifier),   q(z | x, y) = N(mu, sigma^2)  (an MLP)

Of the training set only ``dataset.labeled`` labels are used (100 by default, balanced over
the classes, chosen with ``labeled_seed``); every training image is also used unlabelled.

For a labelled pair the bound is the ELBO of log p(x, y),

    -L(x, y) = E_q(z|x,y)[log p(x | y, z)] + log p(y) - KL(q(z | x, y) || p(z)),

and for an image without a label y is summed out under q(y | x):

    U(x) = sum_y q(y | x) L(x, y) - H(q(y | x)),   -U(x) <= log p(x),

with all K classes decoded in one batched pass. The paper minimises, over a data set of N
images of which N_l are labelled, J = sum_labelled L + sum_unlabelled U plus
alpha_paper * E_labelled[-log q(y | x)] with alpha_paper = 0.1 N. Divided by N (nats per
example) that is

    mean_unlabelled U  +  (N_l / N) [ mean_labelled L  +  alpha (N / N_l) mean_labelled CE ]

with ``alpha = 0.1`` (= alpha_paper / N): within the labelled term, a labelled example's
cross-entropy -log q(y|x) weighs alpha N / N_l times its -ELBO (the authors' code's factor).
Here the bracket's weight is ``labeled_weight``: ``null`` gives the paper's N_l / N exactly
(each labelled example counts like one unlabelled one); the default 1 counts each step's
labelled batch like its unlabelled batch (the labelled examples oversampled N / N_l times), which
trains the classifier within a few epochs instead of hundreds. The trainer's batch is the
unlabelled part (its labels are not used for learning); a labelled batch of
``labeled_batch_size`` is drawn from the stored labelled subset each step. In evaluation
``loss`` is the unlabelled bound -ELBO(x) and ``error`` is the classification error of
argmax q(y | x) against the split's true labels.

The encoder's and decoder's first layers take x (or z) and y through separate weights, so the
part that depends only on x is computed once for all K classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vae_train.checks import Rule, int_list, integer, is_int, number, optional
from vae_train.distributions import DiagGaussian, standard_normal_log_prob_dims
from vae_train.errors import UserError
from vae_train.models.base import (Classifier, ExtraMetrics, HasCode, Inference, LatentVariable,
                                   Model, OwnsObjective, SemiSupervised)
from vae_train.nets import mlp
from vae_train.nets.mlp import ACTIVATION
from vae_train.nets.mlp import activation as make_activation


class _ClassEmbedding(nn.Embedding):
    """The one-hot class input of a linear layer: row y of the weight, initialised like
    ``nn.Linear(K, width)`` would be (uniform in +-1/sqrt(K))."""

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.num_embeddings)
        nn.init.uniform_(self.weight, -bound, bound)


class M2(Model, OwnsObjective, LatentVariable, HasCode, ExtraMetrics, SemiSupervised,
         Classifier):
    # Not ``conditional``: labels are not an input at test time, q(y|x) predicts them.
    checks = {"latent_dim": integer(1),
              # the class enters the networks at their first hidden layer
              "hidden_dims": Rule(lambda v: len(v) > 0 and all(is_int(h) and h > 0 for h in v),
                                  "a non-empty list of positive integers (model=m2 needs a "
                                  "hidden layer: the class enters its networks there)"),
              "classifier_dims": int_list(), "activation": ACTIVATION, "alpha": number(0),
              "labeled_weight": optional(number(0)),
              "labeled_batch_size": integer(1, what="an integer >= 1"),
              "labeled_seed": integer(0)}
    objective_doc = ("the M2 bound: unlabelled -ELBO with y summed out, the labelled -ELBO, "
                     "and alpha times the labelled cross-entropy")

    def __init__(self, input_shape, num_classes: int, latent_dim: int = 50,
                 hidden_dims=(500,), classifier_dims=(500,), activation: str = "relu",
                 alpha: float = 0.1, labeled_weight: float | None = 1.0,
                 labeled_batch_size: int = 100, labeled_seed: int = 0,
                 likelihood: nn.Module | None = None):
        if num_classes < 2:
            raise UserError("model=m2 needs a labelled data set with at least 2 classes")
        super().__init__(input_shape, num_classes, likelihood)
        hidden, classifier = [int(h) for h in hidden_dims], [int(h) for h in classifier_dims]
        self.latent_dim = int(latent_dim)
        self.alpha = float(alpha)
        self.labeled_weight_cfg = None if labeled_weight is None else float(labeled_weight)
        self.labeled_batch_size = int(labeled_batch_size)
        self.labeled_seed = int(labeled_seed)
        d, k, zd = math.prod(self.input_shape), self.num_classes, self.latent_dim

        self.classifier = mlp(d, classifier, k, activation)                 # q(y | x)
        # q(z | x, y): first layer W_x x + W_y onehot(y), then the rest of the MLP
        self.enc_x = nn.Linear(d, hidden[0])
        self.enc_y = _ClassEmbedding(k, hidden[0])
        self.enc_rest = nn.Sequential(make_activation(activation),
                                      mlp(hidden[0], hidden[1:], 2 * zd, activation))
        # p(x | y, z): first layer W_z z + W_y onehot(y), then the mirror image
        back = hidden[::-1]
        self.dec_z = nn.Linear(zd, back[0])
        self.dec_y = _ClassEmbedding(k, back[0])
        self.dec_rest = nn.Sequential(make_activation(activation),
                                      mlp(back[0], back[1:], math.prod(self.output_shape),
                                          activation))

        # set by use_labels(): the labelled subset (as stored, on the data's device) and how
        # to make a batch of it, the weight of the labelled -ELBO and that of the labelled
        # cross-entropy in the loss
        self.labeled = None
        self._to_batch: Callable | None = None
        self.labeled_weight = self.ce_weight = 0.0

    # -- data ---------------------------------------------------------------------------
    def use_labels(self, labeled, to_batch, num_train: int) -> None:
        """Learn from the labelled examples ``labeled`` (``.x``, ``.y``) besides all
        ``num_train`` training examples without their labels."""
        self.labeled, self._to_batch = labeled, to_batch
        ratio = num_train / len(labeled.y)                                 # N / N_l
        self.labeled_weight = 1 / ratio if self.labeled_weight_cfg is None \
            else self.labeled_weight_cfg
        self.ce_weight = self.labeled_weight * self.alpha * ratio

    def labeled_batch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.labeled is None:
            raise RuntimeError("M2 has no labelled examples: call model.use_labels(...) first")
        idx = torch.randint(len(self.labeled.y), (self.labeled_batch_size,), device=device)
        return self._to_batch(self.labeled.x[idx]), self.labeled.y[idx]

    # -- networks -----------------------------------------------------------------------
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """log q(y | x), (B, K)."""
        return F.log_softmax(self.classifier(x.flatten(1)).float(), dim=-1)

    def _qz(self, hx: torch.Tensor, ys: torch.Tensor) -> DiagGaussian:
        """q(z | x, y) for class indices ``ys`` (S, B) given the x-part ``hx`` (B, H)."""
        h = hx + self.enc_y(ys).to(hx.dtype)                     # (S, B, H)
        mu, logvar = self.enc_rest(h).float().chunk(2, dim=-1)
        return DiagGaussian(mu, logvar)

    def encode(self, x: torch.Tensor, ys: torch.Tensor) -> DiagGaussian:
        """q(z | x, y) for class indices ``ys`` of shape (S, B) (or (B,))."""
        return self._qz(self.enc_x(x.flatten(1)), ys)

    def decode(self, z: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Decoder output (``output_shape`` per example: the likelihood's parameters) for
        z (..., D) and classes ys (...)."""
        h = self.dec_z(z)
        h = h + self.dec_y(ys).to(h.dtype)
        return self.dec_rest(h).view(*z.shape[:-1], *self.output_shape)

    def _branches(self, x: torch.Tensor, ys: torch.Tensor, shared_eps: bool = False):
        """For class indices ys (S, B): q(z|x,y), one z from it, log p(x | y, z) (S, B).
        ``shared_eps``: the same noise for every row s (common random numbers: the bounds
        of different classes of one image then differ by the model, not by the draw)."""
        q = self.encode(x, ys)
        if shared_eps:
            z = q.mu + torch.randn(q.mu.shape[1:], device=x.device, dtype=q.mu.dtype) * q.std
        else:
            z = q.rsample()
        out = self.decode(z, ys)
        return q, z, out, self.likelihood.log_prob(out, x)

    def neg_elbo_all_classes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(-log p(x | y, z), KL(q(z|x,y) || p(z))) for every class y, each (K, B): all K
        classes in one batched pass."""
        ys = torch.arange(self.num_classes, device=x.device).view(-1, 1).expand(-1, len(x))
        q, _, _, log_px = self._branches(x, ys, shared_eps=True)
        return -log_px, q.kl_to_standard_normal().sum(-1)

    def neg_elbo_labeled(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L(x, y) = -ELBO of log p(x, y), per example (B,)."""
        q, _, _, log_px = self._branches(x, y.view(1, -1))
        return (-log_px + q.kl_to_standard_normal().sum(-1))[0] + math.log(self.num_classes)

    def unlabeled_terms(self, x: torch.Tensor):
        """Per example: recon, kl (z and y), U(x) = recon + kl, and (-log p(x|y,z) + KL_z +
        log K) for every class (K, B), and log q(y|x) (B, K)."""
        recon_y, kl_z = self.neg_elbo_all_classes(x)            # (K, B) each
        log_qy = self.classify(x)                                # (B, K)
        qy = log_qy.exp()
        log_k = math.log(self.num_classes)
        recon = (qy * recon_y.t()).sum(-1)
        # KL(q(z,y|x) || p(z)p(y)) = sum_y q(y|x) KL_z(x,y) + KL(q(y|x) || uniform)
        kl = (qy * kl_z.t()).sum(-1) + (qy * log_qy).sum(-1) + log_k
        return recon, kl, recon + kl, recon_y + kl_z + log_k, log_qy

    # -- the objective ------------------------------------------------------------------
    def loss_terms(self, x, y=None, step=None, train=True, phase=None) -> dict:
        """Training (a phase): the loss above, with the terms it is made of and the error
        on the batch's labels (logged only: they never reach a gradient). Evaluation
        (phase None): ``loss`` is the unlabelled bound -ELBO(x); ``error``,
        ``classification`` (-log q(y|x)) and ``labeled`` (L(x, y)) use the split's labels."""
        recon, kl, u, per_class, log_qy = self.unlabeled_terms(x)
        if phase is None:
            if y is None:
                raise ValueError("M2 evaluation needs the split's labels (for the error)")
            return {"loss": u.mean(),
                    "error": (log_qy.argmax(-1) != y).float().mean(),
                    "classification": F.nll_loss(log_qy, y),
                    "recon": recon.mean(), "kl": kl.mean(), "elbo": -u.mean(),
                    "unlabeled": u.mean(),
                    "labeled": per_class.gather(0, y.view(1, -1)).mean()}
        xl, yl = self.labeled_batch(x.device)
        labeled = self.neg_elbo_labeled(xl, yl)
        ce = F.cross_entropy(self.classifier(xl.flatten(1)).float(), yl)
        terms = {"loss": u.mean() + self.labeled_weight * labeled.mean() + self.ce_weight * ce}
        if y is not None:
            terms["error"] = (log_qy.detach().argmax(-1) != y).float().mean()
        terms.update({"classification": ce, "recon": recon.mean(), "kl": kl.mean(),
                      "elbo": -u.mean(), "unlabeled": u.mean(), "labeled": labeled.mean()})
        return terms

    # -- the likelihood-bound interface (evaluate's NLL) ------------------------------------
    def infer(self, x, y=None, k: int = 1, analytic_kl: bool = True, step=None) -> Inference:
        """k importance samples of (y, z) per example: y ~ q(y|x), z ~ q(z|x,y), so
        log_px + log_pz - log_qz estimates log p(x). With labels y given, z only: the bound
        is of log p(x, y). ``kl_dims`` is (k, B, D + 1): z's D dimensions, then y's KL
        (analytic KL(q(y|x) || p(y)), or log q(y|x) - log p(y) of the sample)."""
        b, log_k = len(x), math.log(self.num_classes)
        if y is None:
            log_qy_all = self.classify(x)
            ys = torch.distributions.Categorical(logits=log_qy_all).sample((k,))   # (k, B)
            log_qy = log_qy_all.t().gather(0, ys)
            if analytic_kl:
                kl_y = ((log_qy_all.exp() * log_qy_all).sum(-1) + log_k).expand(k, b)
            else:
                kl_y = log_qy + log_k
        else:
            ys = y.view(1, -1).expand(k, b)
            log_qy = torch.zeros(k, b, device=x.device)
            kl_y = torch.full((k, b), log_k, device=x.device)
        q, z, out, log_px = self._branches(x, ys)
        log_pz_dims = standard_normal_log_prob_dims(z)
        log_qz_dims = q.log_prob_dims(z)
        kl_z = q.kl_to_standard_normal() if analytic_kl else log_qz_dims - log_pz_dims
        return {"log_px": log_px, "log_pz": log_pz_dims.sum(-1) - log_k,
                "log_qz": log_qz_dims.sum(-1) + log_qy,
                "kl_dims": torch.cat([kl_z, kl_y.unsqueeze(-1)], dim=-1),
                "x_out": out.flatten(0, 1)}

    def latent_means(self, x, y=None) -> list:
        """E_q[z]: with y summed out under q(y|x) (or at the given labels)."""
        if y is not None:
            return [self.code(x, y)]
        ys = torch.arange(self.num_classes, device=x.device).view(-1, 1).expand(-1, len(x))
        mu = self.encode(x, ys).mu                                    # (K, B, D)
        return [(self.classify(x).exp().t().unsqueeze(-1) * mu).sum(0)]

    # -- evaluate's extra metrics ----------------------------------------------------------
    @torch.no_grad()
    def evaluate_batch(self, x, y) -> dict:
        log_qy = self.classify(x)
        return {"error": (log_qy.argmax(-1) != y).sum(),
                "classification": F.nll_loss(log_qy, y, reduction="sum")}

    def evaluate_summary(self, sums: dict, n: int) -> dict:
        return {"error": float(sums["error"]) / n,
                "classification": float(sums["classification"]) / n}

    # -- the code (z) and pictures ----------------------------------------------------------
    @property
    def code_dim(self) -> int:
        return self.latent_dim

    @property
    def code_kl_slice(self) -> slice:
        return slice(0, self.latent_dim)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """argmax q(y | x)."""
        return self.classifier(x.flatten(1)).argmax(-1)

    def code(self, x, y=None):
        """The mean of q(z | x, y) at the given class, or at the predicted one."""
        y = self.predict(x) if y is None else y
        return self.encode(x, y).mu

    def latents(self, x, y=None) -> dict:
        """q(y | x) as ``class_probs``; the mean and log-variance of q(z | x, y) at the given
        class, or at the predicted one (its mean is the code)."""
        log_qy = self.classify(x)
        y = log_qy.argmax(-1) if y is None else y
        q = self.encode(x, y)
        return {"class_probs": log_qy.exp(), "mean": q.mu, "logvar": q.logvar, "code": q.mu}

    def decode_code(self, c, y=None):
        """Mean images for codes z (B, D) drawn as classes y (B,)."""
        if y is None:
            raise ValueError("M2 decodes a code as a class: pass y")
        return self.likelihood.mean(self.decode(c, y.to(c.device).long()))

    @torch.no_grad()
    def sample(self, n: int, y=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I) and, unless given, y ~ p(y) (uniform); mean images of p(x | y, z)."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        if y is None:
            y = torch.randint(self.num_classes, (n,), generator=generator)
        return self.decode_code(z.to(self.device), y.to(self.device))

    @torch.no_grad()
    def reconstruct(self, x, y=None):
        """At the predicted class (or the given one) and the mean of q(z | x, y)."""
        y = self.predict(x) if y is None else y
        return self.decode_code(self.code(x, y), y)
