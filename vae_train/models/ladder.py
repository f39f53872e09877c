"""Top-down hierarchical VAE ("ladder"): L stochastic layers whose prior and posterior share one
top-down path, as in the Ladder VAE (Sønderby et al. 2016), NVAE (Vahdat & Kautz 2020) and
VDVAE (Child 2021). Bottom-up hierarchies (``hvae``) let their top layers collapse; here every
layer's posterior is conditioned on the layers above it through the same path the prior uses.

Layers are numbered from the data up: z_1 is nearest x, z_L is the top (the code).

Bottom-up (deterministic)::

    d_1 = up_1(stem(x)),   d_l = up_l(d_{l-1})            the deepest features serve the top

Top-down, the top layer first::

    p(z_L) = N(0, I),   q(z_L | x) from d_L
    s = cell_L(in_L(z_L))
    for l = L-1 .. 1:
        p(z_l | z_>l)     = N(mu_p, var_p) from prior_l(s)
        q(z_l | x, z_>l)  merge=residual (NVAE):  mu_p + dmu, logvar_p + dlogvar from post_l([s, d_l])
                          merge=precision (Ladder VAE): N(mu_hat, var_hat) from post_l(d_l) and
                          the prior combined by precision: 1/var_q = 1/var_hat + 1/var_p,
                          mu_q = var_q (mu_hat / var_hat + mu_p / var_p)
        s = cell_l(s + in_l(z_l))
    p(x | z) from head(s)

Cells are residual blocks with layer normalisation: ``cell=mlp`` on vectors of ``hidden_dim`` units (flat data or
images flattened), ``cell=conv`` on feature maps of ``channels`` channels with a resolution
hierarchy: the top half of the layers (rounded up) live at a quarter of the image side, the
rest at half, each layer's z a map of ``latent_dim`` channels there; the top-down path is
upsampled to the next layer's side and to the image at the end.

The KL of layer l is KL(q(z_l | x, z_>l) || p(z_l | z_>l)) at the sampled z_>l, in closed form
(analytic_kl) or as log q - log p. Training aids live in the objective (``loss.warmup_steps``,
``loss.free_bits_layer``, ``loss.kl_balance``; docs/models.md#ladder).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from vae_train.checks import Rule, integer, is_int, one_of
from vae_train.distributions import DiagGaussian
from vae_train.errors import UserError
from vae_train.models.base import HasCode, Hierarchy, Inference, LatentVariable, Model
from vae_train.models.gaussian import repeat_batch
from vae_train.nets.mlp import ACTIVATION, activation

CELLS = ("mlp", "conv")
MERGES = ("residual", "precision")
LATENT_DIMS = Rule(lambda v: (is_int(v) and v >= 1) or (
    not isinstance(v, (str, bytes)) and hasattr(v, "__len__") and len(v) > 0
    and all(is_int(d) and d >= 1 for d in v)),
    "an integer >= 1 (every layer) or a list of one integer >= 1 per layer, bottom first")
LOGVAR_LIMIT = 10.0   # log-variances are soft-clamped into (-10, 10): no overflow early on


def _soft_clamp(t: torch.Tensor, limit: float = LOGVAR_LIMIT) -> torch.Tensor:
    return limit * torch.tanh(t / limit)


def _gaussian(params: torch.Tensor) -> DiagGaussian:
    """Mean and log-variance from the first half and the second half of dimension 1 (features
    of an MLP cell, channels of a conv cell)."""
    mu, logvar = params.float().chunk(2, dim=1)
    return DiagGaussian(mu, _soft_clamp(logvar))


def _precision_merge(hat: DiagGaussian, prior: DiagGaussian) -> DiagGaussian:
    """The product of two Gaussians, normalised: precisions add, means weigh by precision."""
    logvar = -torch.logaddexp(-hat.logvar, -prior.logvar)
    mu = hat.mu * torch.exp(logvar - hat.logvar) + prior.mu * torch.exp(logvar - prior.logvar)
    return DiagGaussian(mu, logvar)


def _gaussian_kl(q: DiagGaussian, p: DiagGaussian) -> torch.Tensor:
    """KL(q || p) per coordinate."""
    return 0.5 * (p.logvar - q.logvar + (torch.exp(q.logvar) + (q.mu - p.mu) ** 2)
                  * torch.exp(-p.logvar) - 1.0)


def _norm(width: int, conv: bool) -> nn.Module:
    """Layer normalisation over the features (an MLP's units; a map's channels and positions)."""
    return nn.GroupNorm(1, width) if conv else nn.LayerNorm(width)


class _Residual(nn.Module):
    """h + f(h), f = layer(act(layer(act(norm(h))))); the last layer starts small so a deep
    stack begins near the identity. The normalisation keeps an unusual input from being
    amplified block after block (without it, one Fashion-MNIST validation image in 6,000 grew
    its features 50-fold over four blocks and its KL to 10^8 nats)."""

    def __init__(self, first: nn.Module, last: nn.Module, act: str, norm: nn.Module):
        super().__init__()
        with torch.no_grad():
            last.weight.mul_(0.1)
        self.f = nn.Sequential(norm, activation(act), first, activation(act), last)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.f(h)


class _Resize(nn.Module):
    """Nearest-neighbour resizing of a feature map to a fixed side, then a 3x3 convolution."""

    def __init__(self, size: tuple[int, int], channels: int):
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(h, size=self.size, mode="nearest"))


class Ladder(Model, LatentVariable, HasCode, Hierarchy):
    checks = {"layers": integer(1), "latent_dim": LATENT_DIMS, "hidden_dim": integer(1),
              "channels": integer(1), "blocks": integer(0, what="an integer >= 0"),
              "cell": one_of(*CELLS), "merge": one_of(*MERGES), "activation": ACTIVATION}

    def __init__(self, input_shape, layers: int = 2, latent_dim=32, hidden_dim: int = 256,
                 channels: int = 64, blocks: int = 1, cell: str = "mlp",
                 merge: str = "residual", activation: str = "silu", num_classes: int = 0,
                 likelihood=None):
        super().__init__(input_shape, num_classes, likelihood)
        self.layers, self.cell, self.merge, self.act = int(layers), cell, merge, activation
        dims = [int(latent_dim)] * self.layers if is_int(latent_dim) else \
            [int(d) for d in latent_dim]
        if len(dims) != self.layers:
            raise UserError(f"model.latent_dim lists {len(dims)} sizes but model.layers="
                            f"{self.layers}; give one per layer (bottom first) or one integer")
        self.latent_dims = dims
        self.blocks = int(blocks)
        if cell == "conv":
            self._build_conv(int(channels))
        else:
            self._build_mlp(int(hidden_dim))
        # Per layer, the shape of z for one example, its size and its place in kl_dims.
        self.sizes = [math.prod(s) for s in self.z_shapes]
        ends = itertools.accumulate(self.sizes)
        self._slices = [slice(e - n, e) for n, e in zip(self.sizes, ends)]

    # -- building ---------------------------------------------------------------------------
    def _nets(self, width: int, linear, conv: bool) -> None:
        """Everything but the stem, the resizing and the head, from ``linear(a, b)`` (a dense
        layer or a 3x3 convolution from a to b features)."""
        L, act = self.layers, self.act

        def block():
            return _Residual(linear(width, width), linear(width, width), act, _norm(width, conv))

        def params(in_width: int, out: int) -> nn.Module:
            last = linear(width, 2 * out)
            with torch.no_grad():
                last.weight.mul_(0.1)
            return nn.Sequential(_norm(in_width, conv), activation(act), linear(in_width, width),
                                 activation(act), last)

        self.up_blocks = nn.ModuleList(nn.Sequential(*[block() for _ in range(self.blocks)])
                                       for _ in range(L))
        self.cells = nn.ModuleList(nn.Sequential(*[block() for _ in range(self.blocks)])
                                   for _ in range(L))
        # posterior nets, bottom first; the top one (and, merge=precision, every one) reads the
        # bottom-up features alone, the others also the top-down state
        self.post = nn.ModuleList(
            params(width if (l == L - 1 or self.merge == "precision") else 2 * width, d)
            for l, d in enumerate(self.latent_dims))
        # prior nets of layers 1..L-1 (the top prior is N(0, I))
        self.prior = nn.ModuleList(params(width, d) for d in self.latent_dims[:-1])

    def _build_mlp(self, width: int) -> None:
        self.z_shapes = [(d,) for d in self.latent_dims]
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(self.input_shape), width))
        self._nets(width, nn.Linear, conv=False)
        self.z_in = nn.ModuleList(nn.Linear(d, width) for d in self.latent_dims)
        self.down = nn.ModuleList(nn.Identity() for _ in range(self.layers))
        self.to_layer = nn.ModuleList(nn.Identity() for _ in range(self.layers - 1))
        self.to_out = nn.Identity()
        self.head = nn.Sequential(_norm(width, False), activation(self.act),
                                  nn.Linear(width, math.prod(self.output_shape)))

    def _build_conv(self, width: int) -> None:
        c, h, w = self.input_shape
        if min(h, w) < 4:
            raise UserError(f"model.cell=conv needs images of side >= 4 (its layers live at "
                            f"half and a quarter of the side); these are {h}x{w}: use "
                            "model.cell=mlp")
        L = self.layers
        half = ((h + 1) // 2, (w + 1) // 2)
        quarter = ((half[0] + 1) // 2, (half[1] + 1) // 2)
        top = (L + 1) // 2                     # layers at a quarter of the side
        self.strides = [2 if l < L - top else 4 for l in range(L)]      # bottom first
        sides = {2: half, 4: quarter}
        self.z_shapes = [(d, *sides[s]) for d, s in zip(self.latent_dims, self.strides)]

        def conv(a: int, b: int) -> nn.Conv2d:
            return nn.Conv2d(a, b, 3, padding=1)

        self.stem = conv(c, width)
        self._nets(width, conv, conv=True)
        self.z_in = nn.ModuleList(nn.Conv2d(d, width, 1) for d in self.latent_dims)
        # bottom-up: stride-2 convolutions wherever the side halves on the way up
        before = [1, *self.strides[:-1]]
        self.down = nn.ModuleList(
            nn.Sequential(*[nn.Conv2d(width, width, 3, stride=2, padding=1)
                            for _ in range(int(math.log2(s // b)))])
            for b, s in zip(before, self.strides))
        # top-down: back to layer l's side from layer l+1's
        self.to_layer = nn.ModuleList(
            _Resize(sides[self.strides[l]], width) if self.strides[l] != self.strides[l + 1]
            else nn.Identity() for l in range(L - 1))
        # to the image's side: nearest-neighbour resizing, the head's 3x3 convolution does the
        # rest (a full-resolution block of `width` channels would cost more than all the others)
        self.to_out = nn.Upsample(size=(h, w), mode="nearest")
        self.head = nn.Sequential(_norm(width, True), activation(self.act),
                                  conv(width, self.output_shape[0]))

    # -- the two passes -----------------------------------------------------------------------
    def bottom_up(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The deterministic features d_1 .. d_L (bottom first)."""
        h = self.stem(x.view(x.shape[0], *self.input_shape))
        out = []
        for down, block in zip(self.down, self.up_blocks):
            h = block(down(h))
            out.append(h)
        return out

    def _posterior(self, l: int, s: torch.Tensor | None, d: torch.Tensor,
                   p: DiagGaussian | None) -> DiagGaussian:
        if p is None:                                   # the top layer
            return _gaussian(self.post[l](d))
        if self.merge == "precision":
            return _precision_merge(_gaussian(self.post[l](d)), p)
        delta = _gaussian(self.post[l](torch.cat([s, d], dim=1)))
        return DiagGaussian(p.mu + delta.mu, _soft_clamp(p.logvar + delta.logvar))

    def top_down(self, n: int, pick, ds: list[torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, list]:
        """Walk the layers from the top. ``pick(l, p, q)`` chooses z_l (in the layer's own
        shape) from its prior ``p`` (None for the top: N(0, I)) and, when the bottom-up
        features ``ds`` are given, its posterior ``q``. Returns the decoder output (n, output
        shape) and, per layer from the top, (p, q, z)."""
        record = []
        s = None
        for l in reversed(range(self.layers)):
            p = None if s is None else _gaussian(self.prior[l](s))
            q = None if ds is None else self._posterior(l, s, ds[l], p)
            z = pick(l, p, q)
            s = self.z_in[l](z) if s is None else s + self.z_in[l](z)
            s = self.cells[l](s)
            if l > 0:
                s = self.to_layer[l - 1](s)
            record.append((p, q, z))
        out = self.head(self.to_out(s))
        return out.view(n, *self.output_shape), record

    def _z_shape(self, l: int, n: int) -> tuple[int, ...]:
        return (n, *self.z_shapes[l])

    def _standard(self, l: int, n: int, like: torch.Tensor) -> DiagGaussian:
        zeros = like.new_zeros(self._z_shape(l, n), dtype=torch.float32)
        return DiagGaussian(zeros, zeros)

    # -- the likelihood bound -------------------------------------------------------------------
    def infer(self, x, y=None, k: int = 1, analytic_kl: bool = True, step=None) -> Inference:
        b = x.shape[0]
        ds = [repeat_batch(d, k) for d in self.bottom_up(x)]
        out, record = self.top_down(k * b, lambda l, p, q: q.rsample(), ds)
        log_px = self.likelihood.log_prob(out.view(k, b, *self.output_shape), x)
        lq_sum = lp_sum = 0
        kls = []
        for l, (p, q, z) in zip(reversed(range(self.layers)), record):
            p = p if p is not None else self._standard(l, k * b, z)
            lq, lp = q.log_prob_dims(z).flatten(1), p.log_prob_dims(z).flatten(1)
            lq_sum = lq_sum + lq.sum(-1)
            lp_sum = lp_sum + lp.sum(-1)
            kls.append(_gaussian_kl(q, p).flatten(1) if analytic_kl else lq - lp)
        kl_dims = torch.cat(kls[::-1], dim=-1)                    # bottom layer first
        return {"log_px": log_px, "log_pz": lp_sum.view(k, b), "log_qz": lq_sum.view(k, b),
                "kl_dims": kl_dims.view(k, b, -1), "x_out": out}

    def _mean_path(self, x: torch.Tensor) -> tuple[torch.Tensor, list]:
        """The top-down pass taking each layer's posterior mean (no sampling)."""
        return self.top_down(x.shape[0], lambda l, p, q: q.mu, self.bottom_up(x))

    def latent_means(self, x, y=None) -> list:
        """E_q[z_l] of each layer (bottom first), along the path where every layer above takes
        its posterior mean."""
        _, record = self._mean_path(x)
        return [q.mu.flatten(1) for _, q, _ in record[::-1]]

    def latents(self, x, y=None) -> dict:
        """Per layer (bottom first) the posterior's mean and log-variance along the mean path:
        ``mean``/``logvar`` for layer 1, ``mean2``/``logvar2`` for layer 2, ...; ``code`` is
        the top layer's mean."""
        _, record = self._mean_path(x)
        out = {}
        for l, (_, q, _) in enumerate(record[::-1]):
            tag = "" if l == 0 else str(l + 1)
            out[f"mean{tag}"], out[f"logvar{tag}"] = q.mu.flatten(1), q.logvar.flatten(1)
        out["code"] = record[0][1].mu.flatten(1)
        return out

    @property
    def layer_slices(self) -> list[slice]:
        return list(self._slices)

    @property
    def code_kl_slice(self) -> slice:
        return self.layer_slices[-1]

    # -- the code: the top layer ----------------------------------------------------------------
    @property
    def code_dim(self) -> int:
        return self.sizes[-1]

    def code(self, x, y=None) -> torch.Tensor:
        """The top layer's posterior mean (it reads the bottom-up features only)."""
        return _gaussian(self.post[-1](self.bottom_up(x)[-1])).mu.flatten(1)

    def decode_code(self, c, y=None) -> torch.Tensor:
        """Mean images with the top layer at ``c`` and every layer below at its prior mean."""
        top = c.view(c.shape[0], *self.z_shapes[-1]).float()

        def pick(l, p, q):
            return top if p is None else p.mu

        out, _ = self.top_down(c.shape[0], pick)
        return self.likelihood.mean(out)

    @torch.no_grad()
    def reconstruct(self, x, y=None) -> torch.Tensor:
        return self.likelihood.mean(self._mean_path(x)[0])

    # -- drawing from the prior -----------------------------------------------------------------
    def layer_noise(self, n: int, generator: torch.Generator | None = None) -> list:
        return [torch.randn(self._z_shape(l, n), generator=generator)
                for l in range(self.layers)]

    @torch.no_grad()
    def sample_from_noise(self, noise: list[torch.Tensor]) -> torch.Tensor:
        device = self.device
        eps = [e.to(device) for e in noise]

        def pick(l, p, q):
            return eps[l] if p is None else p.mu + p.std * eps[l]

        out, _ = self.top_down(len(eps[0]), pick)
        return self.likelihood.mean(out)

    @torch.no_grad()
    def sample(self, n: int, y=None, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample_from_noise(self.layer_noise(n, generator))
