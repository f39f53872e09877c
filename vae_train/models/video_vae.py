"""A hybrid conv-recurrent VAE for video in the style of the disentangled sequential VAE (Li &
Mandt 2018): a per-sequence latent f (content) and per-frame latents z_1..z_T (dynamics).

Examples are videos (T, C, H, W). The networks:

* a per-frame conv encoder e_t = E(x_t) (the strided conv body of ``nets.conv``);
* q(f | x_1:T): a bidirectional core over e_1:T, averaged over time, to a diagonal Gaussian;
* q(z_t | x, f): a core over [e_t, f] to a diagonal Gaussian per frame: causal
  (``posterior=filtered``, q(z_t | x_<=t, f)) or bidirectional (``posterior=full``,
  q(z_t | x_1:T, f));
* the prior: p(f) = N(0, I) and a learned recurrent p(z_t | z_<t) = N(mu_t, sigma_t) from a core
  over z_0 = 0, z_1, ..., z_{t-1};
* p(x_t | f, z_t): a per-frame conv decoder (the encoder's mirror) from [f, z_t], with the
  pixel likelihood of the ``loss`` group (Bernoulli or Gaussian frames) applied frame by frame.

``core`` is the network over time everywhere: ``gru``, ``lstm`` or ``conv`` (a stack of
dilated 1-D convolutions over time, causal where the network must not see the future).

The bound: log p(x | f, z) + log p(f) + sum_t log p(z_t | z_<t) - log q(f | x) - sum_t
log q(z_t | x, f), with k samples for the IWAE bound and evaluate's NLL. ``kl_dims`` holds the
content KL per dimension (the code layer, first) and then the KL of each z_t per dimension,
frame-major, KL(q(z_t | .) || p(z_t | z_<t)) in closed form given the sampled z_<t.

Beyond the contract: content swap (the dynamics of one sequence drawn with the content of
another), dynamics sampling (a fixed content, z_t drawn from the prior) and next-frame
prediction from a prefix (infer f and z_1..z_P from frames 1..P, roll the prior forward, decode);
``evaluate`` reports per-frame and per-sequence terms and the prediction error against copying
the last frame of the prefix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vae_train.checks import int_list, integer, one_of
from vae_train.distributions import (DiagGaussian, DiscretizedGaussian, DiscretizedLogisticMixture,
                                     GaussianLikelihood, standard_normal_log_prob_dims)
from vae_train.errors import UserError
from vae_train.models.base import (ExtraMetrics, HasCode, Inference, LatentVariable, Model,
                                   VideoModel)
from vae_train.nets import ConvDecoder, ConvEncoder
from vae_train.nets.mlp import ACTIVATION, activation

CORES = ("gru", "lstm", "conv")


def frame_likelihood(lik: nn.Module, channels: int) -> nn.Module:
    """The pixel likelihood for frames of ``channels`` channels. ``build`` makes it for the
    first dimension of the example's shape, which for a video is T, not C; a per-channel
    likelihood is made again for C (their parameters are still at their initial values)."""
    if isinstance(lik, GaussianLikelihood) and lik.log_sigma.numel() != channels:
        learned = isinstance(lik.log_sigma, nn.Parameter)
        new = GaussianLikelihood(math.exp(float(lik.log_sigma.detach().flatten()[0])), learned, channels,
                                 lik.bounded)
        return new
    if isinstance(lik, DiscretizedLogisticMixture) and lik.channels != channels:
        return DiscretizedLogisticMixture(lik.mixtures, channels)
    if isinstance(lik, DiscretizedGaussian) and lik.channels != channels:
        return DiscretizedGaussian(channels)
    return lik


class Core(nn.Module):
    """A network over time, (B, T, in_dim) -> (B, T, out_dim): a GRU/LSTM, or dilated 1-D
    convolutions (kernel 3, dilation 1, 2, 4, ...; left-padded when causal). Not
    ``bidirectional``, output t sees inputs <= t only. ``forward(s, state)`` continues from the
    state a previous call returned (the RNN state; for conv the inputs so far)."""

    def __init__(self, kind: str, in_dim: int, hidden: int, layers: int = 1,
                 bidirectional: bool = False, act: str = "silu"):
        super().__init__()
        self.kind, self.bidirectional = kind, bool(bidirectional)
        if kind in ("gru", "lstm"):
            cls = nn.GRU if kind == "gru" else nn.LSTM
            self.net = cls(in_dim, hidden, num_layers=layers, batch_first=True,
                           bidirectional=self.bidirectional)
            self.out_dim = hidden * (2 if self.bidirectional else 1)
        else:
            convs, d = [], in_dim
            for i in range(max(1, layers) + 1):
                convs.append(nn.Conv1d(d, hidden, 3, dilation=2 ** i))
                d = hidden
            self.convs = nn.ModuleList(convs)
            self.act = activation(act)
            self.out_dim = hidden

    def _conv(self, s: torch.Tensor) -> torch.Tensor:
        h = s.transpose(1, 2)
        for i, conv in enumerate(self.convs):
            pad = 2 * conv.dilation[0]
            h = F.pad(h, (pad // 2, pad - pad // 2) if self.bidirectional else (pad, 0))
            h = conv(h)
            if i < len(self.convs) - 1:
                h = self.act(h)
        return h.transpose(1, 2)

    def forward(self, s: torch.Tensor, state=None):
        if self.kind == "conv":
            hist = s if state is None else torch.cat([state, s], 1)
            return self._conv(hist)[:, -s.shape[1]:], hist
        return self.net(s, state)


class VideoVAE(Model, LatentVariable, HasCode, ExtraMetrics, VideoModel):
    example_dims = 4          # one example is (T, C, H, W) (the model contract checks it)
    checks = {"content_dim": integer(1), "dynamics_dim": integer(1), "hidden_dim": integer(1),
              "feature_dim": integer(1), "channels": int_list(nonempty=True),
              "core": one_of(*CORES, what="one of gru, lstm, conv"),
              "core_layers": integer(1), "posterior": one_of("filtered", "full"),
              "activation": ACTIVATION, "prefix": integer(1)}

    def __init__(self, input_shape, content_dim: int = 32, dynamics_dim: int = 16,
                 hidden_dim: int = 256, feature_dim: int = 256, channels=(32, 64, 128),
                 core: str = "gru", core_layers: int = 1, posterior: str = "filtered",
                 activation: str = "silu", prefix: int = 10, num_classes: int = 0,
                 likelihood=None):
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 4:
            raise UserError(f"model=video_vae needs videos, examples of shape (T, C, H, W); "
                            f"this data set's examples are {'x'.join(map(str, shape))} "
                            f"({'C x H x W images' if len(shape) == 3 else f'{len(shape)}-D'}); "
                            "use dataset=moving_mnist (or arrays of N x T x C x H x W)")
        super().__init__(shape, num_classes, likelihood)
        t, c, h, w = shape
        if t < 2:
            raise UserError(f"model=video_vae: the videos have {t} frame (shape "
                            f"{'x'.join(map(str, shape))}); it needs at least 2")
        self.frames, self.frame_shape = t, (c, h, w)
        self.likelihood = frame_likelihood(self.likelihood, c)
        self.content_dim, self.dynamics_dim = int(content_dim), int(dynamics_dim)
        self.core_kind, self.posterior = core, posterior
        # evaluate's prediction: frames 1..P given, the rest predicted (at most T - 1 given)
        self.prefix = min(int(prefix), t - 1)
        df, dz, hd = self.content_dim, self.dynamics_dim, int(hidden_dim)
        self.encoder = ConvEncoder(self.frame_shape, channels, int(feature_dim), activation)
        self.content_core = Core(core, feature_dim, hd, core_layers, True, activation)
        self.content_head = nn.Linear(self.content_core.out_dim, 2 * df)
        self.posterior_core = Core(core, feature_dim + df, hd, core_layers,
                                   posterior == "full", activation)
        # the head also sees [e_t, f] itself (a skip past the core): the frame's own features
        # reach z_t in one linear step, which gets training off the blank-frame plateau
        self.posterior_head = nn.Linear(self.posterior_core.out_dim + feature_dim + df, 2 * dz)
        self.prior_core = Core(core, dz, hd, core_layers, False, activation)
        self.prior_head = nn.Linear(self.prior_core.out_dim, 2 * dz)
        self.decoder = ConvDecoder(self.encoder, df + dz, self.output_shape[1], activation)

    # -- networks ---------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame features (B, T, E) of videos (B, T, C, H, W)."""
        b, t = x.shape[:2]
        return self.encoder(x.reshape(b * t, *x.shape[2:])).view(b, t, -1)

    def content(self, e: torch.Tensor) -> DiagGaussian:
        """q(f | x_1:T) from the frame features."""
        h, _ = self.content_core(e)
        mu, logvar = self.content_head(h.mean(1)).float().chunk(2, -1)
        return DiagGaussian(mu, logvar)

    def dynamics(self, e: torch.Tensor, f: torch.Tensor) -> DiagGaussian:
        """q(z_t | x, f) for every frame: (B, T, Dz) parameters; f (B, Df)."""
        inp = torch.cat([e, f.to(e.dtype).unsqueeze(1).expand(-1, e.shape[1], -1)], -1)
        h, _ = self.posterior_core(inp)
        mu, logvar = self.posterior_head(torch.cat([h, inp], -1)).float().chunk(2, -1)
        return DiagGaussian(mu, logvar)

    def prior(self, z: torch.Tensor) -> DiagGaussian:
        """p(z_t | z_<t) for t = 1..T given z (B, T, Dz) (teacher forcing: z_0 = 0)."""
        inp = torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], 1)
        h, _ = self.prior_core(inp)
        mu, logvar = self.prior_head(h).float().chunk(2, -1)
        return DiagGaussian(mu, logvar)

    def roll_prior(self, n: int, steps: int, z_given: torch.Tensor | None = None,
                   sample: bool = False, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
        """z for ``steps`` frames after ``z_given`` (B, P, Dz; None: from the start), each from
        p(z_t | z_<t): its mean, or a draw (``sample``; ``generator`` a CPU generator)."""
        start = torch.zeros(n, 1, self.dynamics_dim, device=self.device)
        inp = start if z_given is None else torch.cat([start, z_given], 1)
        h, state = self.prior_core(inp)
        out = []
        for s in range(steps):
            mu, logvar = self.prior_head(h[:, -1]).float().chunk(2, -1)
            z = mu
            if sample:
                eps = torch.randn(mu.shape, generator=generator).to(mu.device)
                z = mu + torch.exp(0.5 * logvar) * eps
            out.append(z)
            if s < steps - 1:
                h, state = self.prior_core(z.unsqueeze(1), state)
        return torch.stack(out, 1)

    def decode(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Decoder output (B, T, P, H, W) for content f (B, Df) and dynamics z (B, T, Dz)."""
        b, t = z.shape[:2]
        inp = torch.cat([f.unsqueeze(1).expand(-1, t, -1), z], -1).reshape(b * t, -1)
        return self.decoder(inp).view(b, t, *self.output_shape[1:])

    def frames_mean(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decode(f, z))

    def log_px(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | f, z) per sequence and frame, (k, B, T), for decoder output (k, B, T, P,
        H, W) and videos x (B, T, C, H, W): the pixel likelihood frame by frame."""
        k, b, t = out.shape[:3]
        lp = self.likelihood.log_prob(out.reshape(k, b * t, *out.shape[3:]),
                                      x.reshape(b * t, *x.shape[2:]))
        return lp.view(k, b, t)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or tuple(x.shape[2:]) != self.frame_shape:
            raise UserError(f"model=video_vae takes videos (B, T, {', '.join(map(str, self.frame_shape))}); "
                            f"got a batch of shape {tuple(x.shape)}")

    # -- the likelihood bound --------------------------------------------------------------
    def infer(self, x: torch.Tensor, y: torch.Tensor | None = None, k: int = 1,
              analytic_kl: bool = True, step: int | None = None) -> Inference:
        self._check_input(x)
        b, t = x.shape[:2]
        e = self.features(x)
        qf = self.content(e)
        f = qf.rsample(k)                                            # (k, B, Df)
        ek = e.unsqueeze(0).expand(k, *e.shape).reshape(k * b, t, -1)
        qz = self.dynamics(ek, f.reshape(k * b, -1))                 # (kB, T, Dz)
        z = qz.rsample()
        pz = self.prior(z)
        out = self.decode(f.reshape(k * b, -1), z)                   # (kB, T, P, H, W)
        log_px = self.log_px(out.view(k, b, *out.shape[1:]), x).sum(-1)
        lpf = standard_normal_log_prob_dims(f)                       # (k, B, Df)
        lqf = qf.log_prob_dims(f)
        lpz = pz.log_prob_dims(z).view(k, b, -1)                     # (k, B, T * Dz)
        lqz = qz.log_prob_dims(z).view(k, b, -1)
        if analytic_kl:
            klf = qf.kl_to_standard_normal().unsqueeze(0).expand_as(f)
            klz = gaussian_kl(qz, pz).view(k, b, -1)
            kl_dims = torch.cat([klf, klz], -1)
        else:
            kl_dims = torch.cat([lqf - lpf, lqz - lpz], -1)
        return {"log_px": log_px, "log_pz": lpf.sum(-1) + lpz.sum(-1),
                "log_qz": lqf.sum(-1) + lqz.sum(-1), "kl_dims": kl_dims, "x_out": out}

    def posterior_means(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[f], E[z_1:T] given E[f]): (B, Df), (B, T, Dz)."""
        self._check_input(x)
        e = self.features(x)
        f = self.content(e).mu
        return f, self.dynamics(e, f).mu

    def latent_means(self, x: torch.Tensor, y: torch.Tensor | None = None) -> list:
        f, z = self.posterior_means(x)
        return [f, z.flatten(1)]

    @property
    def code_kl_slice(self) -> slice:
        return slice(0, self.content_dim)

    # -- the code: the content f -------------------------------------------------------------
    @property
    def code_dim(self) -> int:
        return self.content_dim

    def code(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x)
        return self.content(self.features(x)).mu

    def decode_code(self, c: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Content ``c`` drawn with the prior's mean dynamics."""
        return self.frames_mean(c, self.roll_prior(c.shape[0], self.frames))

    def latents(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        f, z = self.posterior_means(x)
        return {"code": f, "content": f, "dynamics": z}

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        f = torch.randn(n, self.content_dim, generator=generator).to(self.device)
        return self.frames_mean(f, self.roll_prior(n, self.frames, sample=True,
                                                   generator=generator))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.frames_mean(*self.posterior_means(x))

    # -- video -------------------------------------------------------------------------------
    @torch.no_grad()
    def swap(self, x_dynamics: torch.Tensor, x_content: torch.Tensor) -> torch.Tensor:
        if len(x_dynamics) != len(x_content):
            raise UserError(f"swap pairs row i of x_dynamics with row i of x_content; got "
                            f"{len(x_dynamics)} and {len(x_content)} sequences")
        _, z = self.posterior_means(x_dynamics)
        return self.frames_mean(self.code(x_content), z)

    @torch.no_grad()
    def sample_dynamics(self, x_content: torch.Tensor, n: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        if int(n) < 1:
            raise UserError(f"sample_dynamics draws n >= 1 dynamics per sequence; got n={n}")
        f = self.code(x_content)
        b = len(f)
        z = self.roll_prior(b * n, self.frames, sample=True, generator=generator)
        fs = f.unsqueeze(1).expand(b, n, -1).reshape(b * n, -1)
        return self.frames_mean(fs, z).view(b, n, *self.input_shape)

    @torch.no_grad()
    def predict(self, x_prefix: torch.Tensor, steps: int) -> torch.Tensor:
        if x_prefix.dim() != 5 or tuple(x_prefix.shape[2:]) != self.frame_shape:
            raise UserError(f"predict takes a prefix of frames (B, P, "
                            f"{', '.join(map(str, self.frame_shape))}); got "
                            f"{tuple(x_prefix.shape)}")
        if x_prefix.shape[1] < 1 or int(steps) < 1:
            raise UserError(f"predict needs a prefix of at least one frame and steps >= 1; got "
                            f"{x_prefix.shape[1]} frames and steps={steps}")
        f, z = self.posterior_means(x_prefix)
        return self.frames_mean(f, self.roll_prior(len(f), steps, z_given=z))

    # -- evaluate -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sequence sums: reconstruction, content KL, dynamics KL (one sample, analytic),
        and the mean squared error per pixel of predicting frames P+1..T (and frame P+1 alone,
        ``next``) from frames 1..P (P = ``prefix``), and of copying frame P instead."""
        out = self.infer(x, k=1, analytic_kl=True)
        recon = -out["log_px"][0].double()
        kl = out["kl_dims"][0].double()
        kl_f, kl_z = kl[:, :self.content_dim].sum(-1), kl[:, self.content_dim:].sum(-1)
        p = self.prefix
        target = x[:, p:].float()
        pred = self.predict(x[:, :p], self.frames - p)
        per, first = target[0].numel(), target[0, 0].numel()    # pixels predicted
        pred_se = ((pred - target) ** 2).double()
        copy_se = ((x[:, p - 1:p].float() - target) ** 2).double()
        return {"recon": recon.sum(), "kl_content": kl_f.sum(), "kl_dynamics": kl_z.sum(),
                "predict_se": pred_se.sum() / per, "copy_last_se": copy_se.sum() / per,
                "predict_next_se": pred_se[:, 0].sum() / first,
                "copy_last_next_se": copy_se[:, 0].sum() / first}

    def evaluate_summary(self, sums: dict[str, torch.Tensor], n: int) -> dict:
        t = self.frames
        m = {k: float(v) / n for k, v in sums.items()}
        elbo = -(m["recon"] + m["kl_content"] + m["kl_dynamics"])
        return {"sequence_recon": m["recon"], "sequence_kl_content": m["kl_content"],
                "sequence_kl_dynamics": m["kl_dynamics"], "sequence_elbo": elbo,
                "frame_recon": m["recon"] / t, "frame_kl_dynamics": m["kl_dynamics"] / t,
                "frame_elbo": elbo / t, "predict_prefix": self.prefix,
                "predict_mse": m["predict_se"], "copy_last_mse": m["copy_last_se"],
                "predict_next_mse": m["predict_next_se"],
                "copy_last_next_mse": m["copy_last_next_se"]}


def gaussian_kl(q: DiagGaussian, p: DiagGaussian) -> torch.Tensor:
    """KL(q || p) per coordinate for diagonal Gaussians."""
    return 0.5 * (p.logvar - q.logvar
                  + (torch.exp(q.logvar) + (q.mu - p.mu) ** 2) * torch.exp(-p.logvar) - 1.0)
