"""Vector-quantised VAE (van den Oord et al. 2017) with an autoregressive prior.

A convolutional encoder (``body=plain``: strided convs; ``body=resnet``: the residual body of
``vae_train/nets/resnet.py``; both take 28 px to a 7x7 grid by default) maps an image to a grid
of D-dimensional vectors z_e; each is replaced by its nearest entry of a codebook of K vectors
(z_q), and the decoder reconstructs from z_q. The encoder receives the decoder's gradient
straight through the quantisation. Per example, summed over grid positions and the D
dimensions:

    loss = -log p(x | z_q) + ||sg[z_e] - e||^2 + commitment * ||z_e - sg[e]||^2

With ``ema=true`` the codebook is not learned by gradient but kept as an exponential moving
average (``decay``) of the encoder outputs assigned to each code; the codebook term is then only
logged. A code that goes unused (its running uses per batch fall below ``restart_threshold``
times its fair share, batch vectors / K) is restarted at a random encoder output of the batch.

The prior over code grids is a small PixelCNN (masked convolutions, raster order), trained in a
second stage of the same run for ``prior_epochs`` epochs on the codes of the frozen encoder.
With a prior, -log p(x) <= -log p(x | z_q) - log p(z_q) (a one-hot posterior has no entropy):
``evaluate`` reports that bound, in nats per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vae_train.checks import BOOLEAN, int_list, integer, number, one_of
from vae_train.errors import UserError
from vae_train.models.base import (CodeGrid, ExtraMetrics, Model, OwnsObjective, ParameterGroups,
                                   Stage, Staged)
from vae_train.nets import ConvDecoder, ConvEncoder, ResNetDecoder, ResNetEncoder
from vae_train.nets.mlp import ACTIVATION
from vae_train.nets.mlp import activation as make_activation
from vae_train.nets.resnet import BLOCKS, DOWNSAMPLES, NORM


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only positions before the centre in raster order (type A) or
    the centre too (type B)."""

    def __init__(self, cin: int, cout: int, kernel: int, mask_type: str):
        super().__init__(cin, cout, kernel, padding=kernel // 2)
        mask = torch.ones_like(self.weight)
        c = kernel // 2
        mask[:, :, c, c + (mask_type == "B"):] = 0
        mask[:, :, c + 1:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNNPrior(nn.Module):
    """p(c) = prod_i p(c_i | c_<i) over a grid of code indices, in raster order."""

    def __init__(self, num_codes: int, channels: int = 64, layers: int = 6, kernel: int = 3):
        super().__init__()
        self.num_codes = num_codes
        self.embed = nn.Embedding(num_codes, channels)
        self.first = MaskedConv2d(channels, channels, 2 * kernel + 1, "A")
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), MaskedConv2d(channels, channels, kernel, "B"), nn.ReLU(),
                          nn.Conv2d(channels, channels, 1))
            for _ in range(layers))
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, num_codes, 1))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices -> (B, K, h, w) logits of each position given those before it."""
        h = self.first(self.embed(codes).permute(0, 3, 1, 2))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)

    def nll(self, codes: torch.Tensor) -> torch.Tensor:
        """-log p(codes) per grid, in nats: (B, h, w) -> (B,)."""
        logits = self(codes).float()
        return F.cross_entropy(logits, codes, reduction="none").flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, grid: tuple[int, int], device, generator=None) -> torch.Tensor:
        h, w = grid
        codes = torch.zeros(n, h, w, dtype=torch.long, device=device)
        for i in range(h):
            for j in range(w):
                probs = torch.softmax(self(codes)[:, :, i, j].float(), dim=1).cpu()
                codes[:, i, j] = torch.multinomial(probs, 1, generator=generator)[:, 0].to(device)
        return codes


class VQVAE(Model, OwnsObjective, ParameterGroups, Staged, ExtraMetrics, CodeGrid):
    objective_doc = "reconstruction + codebook + commitment, then a PixelCNN prior over codes"
    checks = {"num_codes": integer(2), "code_dim": integer(1, "an integer >= 1"),
              "channels": int_list(nonempty=True), "commitment": number(0), "ema": BOOLEAN,
              "decay": number(0, 1, low_open=True, high_open=True),
              "restart_threshold": number(0), "prior_epochs": integer(0),
              "prior_channels": integer(1, "an integer >= 1"), "prior_layers": integer(0),
              "activation": ACTIVATION, "body": one_of("plain", "resnet"), "blocks": BLOCKS,
              "norm": NORM, "attention": BOOLEAN, "downsamples": DOWNSAMPLES}

    def __init__(self, input_shape, num_codes: int = 128, code_dim: int = 32,
                 channels=(32, 64), commitment: float = 0.25, ema: bool = False,
                 decay: float = 0.99, restart_threshold: float = 0.03, prior_epochs: int = 10,
                 prior_channels: int = 64, prior_layers: int = 6, activation: str = "relu",
                 body: str = "plain", blocks=1, norm: str = "group", attention: bool = False,
                 downsamples: int | None = None, num_classes: int = 0, likelihood=None):
        super().__init__(input_shape, num_classes, likelihood)
        self.num_codes, self.code_dim = int(num_codes), int(code_dim)
        self.commitment, self.ema, self.decay = float(commitment), bool(ema), float(decay)
        self.restart_threshold = float(restart_threshold)
        self.prior_epochs = int(prior_epochs)
        self.stage = "autoencoder"

        self.body = body
        if body == "plain":
            enc = ConvEncoder(self.input_shape, channels, None, activation)
            feat = enc.feature_shape[0]
            self.grid = tuple(enc.feature_shape[1:])
            self.encoder = nn.Sequential(enc, nn.Conv2d(feat, self.code_dim, 1))
            self.decoder = nn.Sequential(nn.Conv2d(self.code_dim, feat, 3, padding=1),
                                         make_activation(activation),
                                         ConvDecoder(enc, None, self.output_shape[0], activation))
        else:   # the residual body, its last 1x1 conv to the code vectors
            self.encoder = ResNetEncoder(self.input_shape, channels, None, self.code_dim,
                                         blocks=blocks, norm=norm, act=activation,
                                         attention=attention, downsamples=downsamples)
            self.grid = tuple(self.encoder.feature_shape[1:])
            self.decoder = ResNetDecoder(self.encoder, None, self.output_shape[0])
        self.codebook = nn.Parameter(
            torch.empty(self.num_codes, self.code_dim).uniform_(-1 / self.num_codes,
                                                                 1 / self.num_codes),
            requires_grad=not self.ema)
        self.register_buffer("ema_count", torch.ones(self.num_codes))
        self.register_buffer("ema_sum", self.codebook.detach().clone())
        # Running uses per batch; zero at first, so the first training step restarts every
        # code the batch did not use at one of its encoder outputs (a data-driven start).
        self.register_buffer("usage", torch.zeros(self.num_codes))
        self.register_buffer("prior_steps", torch.zeros((), dtype=torch.long))
        self.prior = PixelCNNPrior(self.num_codes, prior_channels, prior_layers)

    # -- stages and parameter groups ----------------------------------------------------------
    def stages(self, epochs: int) -> list[Stage]:
        out = [Stage("autoencoder", epochs, ("main",))]
        if self.prior_epochs:
            out.append(Stage("prior", self.prior_epochs, ("prior",)))
        return out

    def parameter_groups(self) -> dict:
        prior = {id(p) for p in self.prior.parameters()}
        main = [p for p in self.parameters() if id(p) not in prior and p.requires_grad]
        return {"main": main, "prior": list(self.prior.parameters())}

    @property
    def has_prior(self) -> bool:
        return int(self.prior_steps) > 0

    # -- quantisation -----------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z_e: (B, D, h, w), float32."""
        return self.encoder(x).float()

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codes: indices (B, h, w) and z_q (B, D, h, w)."""
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        e = self.codebook.float()
        dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1))
        idx = dist.argmin(1)
        z_q = e[idx].view(b, h, w, d).permute(0, 3, 1, 2)
        return idx.view(b, h, w), z_q

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.encode(x))[0]

    def decode_codes(self, idx: torch.Tensor) -> torch.Tensor:
        """Mean images for grids of code indices."""
        z_q = self.codebook.float()[idx].permute(0, 3, 1, 2)
        return self.likelihood.mean(self.decoder(z_q))

    @torch.no_grad()
    def _update_codebook(self, z_e: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor):
        """EMA codebook (when ``ema``), running usage, and restarts of dead codes."""
        flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        idx = idx.flatten()
        if self.ema:
            sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, flat)
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (n + self.num_codes * 1e-5) * n
            self.codebook.data.copy_(self.ema_sum / smoothed.unsqueeze(1))
        self.usage.mul_(0.99).add_(counts, alpha=0.01)
        fair = len(flat) / self.num_codes          # uses per batch if all codes shared equally
        dead = torch.nonzero(self.usage < self.restart_threshold * fair).flatten()
        if len(dead):
            pick = torch.randint(0, len(flat), (len(dead),), device=flat.device)
            self.codebook.data[dead] = flat[pick]
            self.ema_sum[dead] = flat[pick]
            self.ema_count[dead] = 1.0
            self.usage[dead] = 2 * self.restart_threshold * fair   # ~70 steps to prove itself

    def _usage_terms(self, counts: torch.Tensor) -> dict:
        p = counts / counts.sum()
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
        return {"perplexity": perplexity, "codes_used": (counts > 0).float().mean()}

    # -- the objective ------------------------------------------------------------------------
    def loss_terms(self, x, y=None, step=None, train=True, phase=None) -> dict:
        if phase == "prior":
            # the encoder is frozen in this stage: in evaluation mode, so that BatchNorm
            # (norm=batch) neither normalises by the batch nor moves its running statistics
            training = self.encoder.training
            self.encoder.eval()
            try:
                idx = self.codes(x)
            finally:
                self.encoder.train(training)
            nll = self.prior.nll(idx).mean()
            if train:
                self.prior_steps += 1
            return {"loss": nll, "prior_nll": nll}
        z_e = self.encode(x)
        idx, z_q = self.quantize(z_e)
        commit = (z_e - z_q.detach()).pow(2).flatten(1).sum(1).mean()
        codebook = (z_e.detach() - z_q).pow(2).flatten(1).sum(1).mean()
        z_st = z_e + (z_q - z_e).detach()                  # straight-through gradient
        recon = -self.likelihood.log_prob(self.decoder(z_st), x).mean()
        counts = torch.bincount(idx.flatten(), minlength=self.num_codes).float()
        if phase is not None and train:
            self._update_codebook(z_e, idx, counts)
        loss = recon + self.commitment * commit + (0.0 if self.ema else codebook)
        terms = {"loss": loss, "recon": recon, "codebook": codebook.detach(),
                 "commitment": commit, **self._usage_terms(counts)}
        if phase is None and self.stage == "prior":   # evaluation in the prior stage
            nll = self.prior.nll(idx).mean()
            terms.update(loss=nll, prior_nll=nll, nll_bound=recon + nll)
        return terms

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_batch(self, x, y) -> dict:
        idx, z_q = self.quantize(self.encode(x))
        out = self.decoder(z_q)
        recon = -self.likelihood.log_prob(out, x)
        sums = {"recon": recon.sum(),
                "sq_error": (self.likelihood.mean(out) - x).pow(2).sum(),
                "counts": torch.bincount(idx.flatten(), minlength=self.num_codes).float()}
        if self.has_prior:
            nll = self.prior.nll(idx)
            sums.update(prior_nll=nll.sum(), nll_bound=(recon + nll).sum())
        return sums

    def evaluate_summary(self, sums: dict, n: int) -> dict:
        usage = self._usage_terms(sums["counts"])
        out = {"recon": sums["recon"].item() / n,
               "mse_per_pixel": sums["sq_error"].item() / (n * math.prod(self.input_shape)),
               "perplexity": usage["perplexity"].item(),
               "codes_used": usage["codes_used"].item(),
               "codebook_size": self.num_codes}
        if "prior_nll" in sums:
            out["prior_nll"] = sums["prior_nll"].item() / n
            out["nll_bound"] = sums["nll_bound"].item() / n
        return out

    # -- reconstructions and samples -----------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x, y=None) -> torch.Tensor:
        return self.decode_codes(self.codes(x))

    @torch.no_grad()
    def sample(self, n: int, y=None, generator=None) -> torch.Tensor:
        """Images decoded from code grids drawn from the PixelCNN prior."""
        if not self.has_prior:
            raise UserError("this VQ-VAE has no trained prior (model.prior_epochs=0), so it "
                            "cannot draw new images; train one: python -m vae_train resume=<run> "
                            "model.prior_epochs=10")
        return self.decode_codes(self.prior.sample(n, self.grid, self.device, generator))
