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
import sys

import torch
import torch.nn.functional as F
from torch import nn

from vae_train.data.batches import to_float
from vae_train.errors import UserError
from vae_train.losses import BernoulliLikelihood, DiagGaussian, standard_normal_log_prob_dims
from vae_train.nets import mlp
from vae_train.nets.mlp import activation as make_activation

DEFAULT_LABELED = 100


class _ClassEmbedding(nn.Embedding):
    """The one-hot class input of a linear layer: row y of the weight, initialised like
    ``nn.Linear(K, width)`` would be (uniform in +-1/sqrt(K))."""

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.num_embeddings)
        nn.init.uniform_(self.weight, -bound, bound)


class _GivenClass:
    """A view of an M2 model as a conditional model, so the shared picture functions
    (class grid, traversals, interpolations, reconstructions) pass it the class explicitly."""

    conditional = True

    def __init__(self, model: M2):
        self._m = model
        self.num_classes, self.code_dim = model.num_classes, model.code_dim

    def parameters(self):
        return self._m.parameters()

    def code(self, x, y):
        return self._m.code(x, y)

    def decode_code(self, c, y):
        return self._m.decode_code(c, y)

    def reconstruct(self, x, y):
        return self._m.reconstruct(x, y)

    def sample(self, n, y=None, generator=None):
        return self._m.sample(n, y, generator)


class M2(nn.Module):
    conditional = False          # labels are not an input at test time: q(y|x) predicts them
    semi_supervised = True       # accepts dataset.labeled
    objective_doc = ("the M2 bound: unlabelled -ELBO with y summed out, the labelled -ELBO, "
                     "and alpha times the labelled cross-entropy")

    def __init__(self, input_shape, num_classes: int, latent_dim: int = 50,
                 hidden_dims=(500,), classifier_dims=(500,), activation: str = "relu",
                 alpha: float = 0.1, labeled_weight: float | None = 1.0,
                 labeled_batch_size: int = 100, labeled_seed: int = 0,
                 likelihood: nn.Module | None = None):
        super().__init__()
        if num_classes < 2:
            raise UserError("model=m2 needs a labelled data set with at least 2 classes")
        # Values are range-checked with the rest of the config (config.CHECKS), before any
        # data is read; M2 alone needs a hidden layer: the class enters the networks there.
        hidden, classifier = [int(h) for h in hidden_dims], [int(h) for h in classifier_dims]
        if not hidden:
            raise UserError("model.hidden_dims=[] is invalid: model=m2 needs at least one "
                            "hidden layer (the class enters its networks there)")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.latent_dim = int(latent_dim)
        self.alpha = float(alpha)
        self.labeled_weight_cfg = None if labeled_weight is None else float(labeled_weight)
        self.labeled_batch_size = int(labeled_batch_size)
        self.labeled_seed = int(labeled_seed)
        self.likelihood = likelihood if likelihood is not None else BernoulliLikelihood()
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
                                      mlp(back[0], back[1:], d, activation))

        # set by bind(): the labelled subset (uint8 on the data's device), the weight of the
        # labelled -ELBO and that of the labelled cross-entropy in the loss
        self.labeled = None
        self.labeled_weight = self.ce_weight = 0.0
        self.dynamic_binarize = False

    # -- data ---------------------------------------------------------------------------
    def bind(self, data) -> None:
        """Keep ``data.labeled`` (default 100) balanced labelled training examples."""
        n = DEFAULT_LABELED if getattr(data, "labeled", None) is None else data.labeled
        self.labeled = data.labeled_subset(n, self.labeled_seed)
        ratio = len(data.train) / len(self.labeled)                      # N / N_l
        self.labeled_weight = 1 / ratio if self.labeled_weight_cfg is None \
            else self.labeled_weight_cfg
        self.ce_weight = self.labeled_weight * self.alpha * ratio
        self.dynamic_binarize = data.binarize == "dynamic"

    def labeled_batch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.labeled is None:
            raise RuntimeError("M2 has no labelled examples: call model.bind(data) first")
        idx = torch.randint(len(self.labeled), (self.labeled_batch_size,), device=device)
        x = to_float(self.labeled.x[idx])
        if self.dynamic_binarize:
            x = torch.bernoulli(x)
        return x, self.labeled.y[idx]

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
        """Decoder output (one number per pixel) for z (..., D) and classes ys (...)."""
        h = self.dec_z(z)
        h = h + self.dec_y(ys).to(h.dtype)
        return self.dec_rest(h).view(*z.shape[:-1], *self.input_shape)

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
    def infer(self, x, y=None, k: int = 1, analytic_kl: bool = True, step=None) -> dict:
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

    def decode_code(self, c, y=None):
        """Mean images for codes z (B, D) drawn as classes y (B,)."""
        if y is None:
            raise ValueError("M2 decodes a code as a class: pass y")
        return self.likelihood.mean(self.decode(c, y.to(c.device).long()))

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def sample(self, n: int, y=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I) and, unless given, y ~ p(y) (uniform); mean images of p(x | y, z)."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        if y is None:
            y = torch.randint(self.num_classes, (n,), generator=generator)
        return self.decode_code(z.to(self._device()), y.to(self._device()))

    @torch.no_grad()
    def reconstruct(self, x, y=None):
        """At the predicted class (or the given one) and the mean of q(z | x, y)."""
        y = self.predict(x) if y is None else y
        return self.decode_code(self.code(x, y), y)

    @torch.no_grad()
    def figures(self, x, y, n: int, seed: int = 0) -> dict:
        """Reconstructions (at the predicted class), prior samples, and the class grid: one
        row per class, one column per shared z (a 'style')."""
        from vae_train.pictures import class_grid, prior_samples, reconstruction_grid

        view = _GivenClass(self)
        x = x[:n]
        return {"reconstructions": reconstruction_grid(view, x, self.predict(x)),
                "samples": prior_samples(self, n, seed),
                "class_samples": class_grid(view, seed=seed)}

    @torch.no_grad()
    def sample_figures(self, x, y, args) -> dict:
        """sample.py's set: samples, class grid, reconstructions, traversals and
        interpolations, each image drawn as the class q(y|x) predicts for it."""
        from vae_train.pictures import interpolations, traversals

        n, i = int(args.n), int(args.image)
        figs = self.figures(x, y, n, int(args.seed))
        pred = self.predict(x)
        kl = self.encode(x, pred).kl_to_standard_normal().mean(0).cpu()
        order = torch.argsort(kl, descending=True)[:int(args.dims)].tolist()
        view = _GivenClass(self)
        figs["traversals"] = traversals(view, x[i:i + 1], pred[i:i + 1], order, int(args.steps),
                                        float(args.span))
        figs["interpolations"] = interpolations(view, x, pred, int(args.pairs),
                                                int(args.interp_steps))
        print("traversed code dimensions (mean KL, nats): "
              + ", ".join(f"{d} ({kl[d]:.2f})" for d in order), file=sys.stderr)
        return figs
