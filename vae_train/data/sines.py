"""A generated sequence data set: noisy sums of 1 to ``max_components`` sinusoids.

Each sequence has ``length`` time steps of one feature, stored like every data set as
(N, C, H, W) = (N, 1, T, 1) float32. A sequence draws its number of components k uniformly from
1..max_components (its label is k - 1), and per component a frequency (1 to 6 cycles over the
sequence), a phase and a relative amplitude; the sum is scaled to a peak of 0.4 * A around 0.5
(A, the overall amplitude, uniform in [0.5, 1]), Gaussian noise of standard deviation ``noise``
is added and the values are clipped to [0.01, 0.99], so they stay inside (0, 1) where the
Gaussian likelihood's sigmoid mean can reach them. Seeded: the same settings give the same data.

Anomalies for ``score`` (docs/score.md): ``glitches`` > 0 makes that fraction of the test
sequences anomalous (:func:`inject_glitches`): each gets one glitch in a window at a random
place, of a kind drawn from ``glitch_kinds``:

- ``spike``: 1 to 3 steps pushed 0.35 to 0.5 away from their value (towards the far side);
- ``dropout``: a window of T/8 to T/4 steps reads 0.01 (the sensor went silent);
- ``frequency``: a window of T/4 to T/2 steps becomes a sine of 10 to 16 cycles per sequence
  (faster than any normal one, which has at most 6), amplitude 0.3, plus the noise.

The labels then say which is which, in both splits: 1 for a glitched sequence, 0 for a normal
one (classes ``normal``, ``glitch``; the training split is all normal), so
``python -m vae_train.score ... anomalies=[1]`` scores how well the glitches are found.
"""

from __future__ import annotations

import math

import torch

from vae_train.checks import Rule, integer, number, optional
from vae_train.data.base import DataSet, ImageData

MIN_CYCLES, MAX_CYCLES = 1.0, 6.0
GLITCH_KINDS = ("spike", "dropout", "frequency")
GLITCH_CLASSES = ["normal", "glitch"]


def sine_classes(max_components: int) -> list[str]:
    return [f"{k} sine" + ("s" if k > 1 else "") for k in range(1, max_components + 1)]


def make_sines(n: int, seed: int, length: int = 64, noise: float = 0.05,
               max_components: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` float32 sequences of shape (1, length, 1) in [0.01, 0.99] and labels in
    0..max_components-1 (the number of components minus one)."""
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.randint(0, max_components, (n,), generator=g)
    m = max_components
    cycles = MIN_CYCLES + (MAX_CYCLES - MIN_CYCLES) * torch.rand(n, m, generator=g)
    phase = 2 * math.pi * torch.rand(n, m, generator=g)
    amp = 0.3 + 0.7 * torch.rand(n, m, generator=g)
    amp = amp * (torch.arange(m) <= labels[:, None])            # components beyond k are off
    overall = 0.5 + 0.5 * torch.rand(n, generator=g)
    eps = torch.randn(n, length, generator=g)
    t = torch.arange(length, dtype=torch.float32) / length
    waves = torch.sin(2 * math.pi * cycles[:, :, None] * t + phase[:, :, None])  # (n, m, T)
    signal = (amp[:, :, None] * waves).sum(1)                    # (n, T)
    peak = signal.abs().amax(1, keepdim=True).clamp_min(1e-6)
    x = 0.5 + 0.4 * overall[:, None] * signal / peak + noise * eps
    x = x.clamp(0.01, 0.99).to(torch.float32)
    return x.view(n, 1, length, 1), labels


def inject_glitches(x: torch.Tensor, fraction: float, seed: int, noise: float = 0.05,
                    kinds=GLITCH_KINDS) -> tuple[torch.Tensor, torch.Tensor, list[str | None]]:
    """A copy of sequences ``x`` (N, 1, T, 1) with ``round(fraction * N)`` of them (chosen with
    ``seed``) glitched as the module says; returns (x, labels (N,) int64: 1 glitched, 0 not,
    the kind of each glitch or None)."""
    n, length = len(x), x.shape[2]
    g = torch.Generator().manual_seed(int(seed))
    out = x.clone()
    labels = torch.zeros(n, dtype=torch.int64)
    kind_of: list[str | None] = [None] * n
    count = int(round(float(fraction) * n))
    chosen = torch.randperm(n, generator=g)[:count].tolist()
    kinds = list(kinds)

    def draw(low: int, high: int) -> int:      # an integer in [low, high]
        return int(torch.randint(low, high + 1, (1,), generator=g))

    for i in sorted(chosen):
        kind = kinds[draw(0, len(kinds) - 1)]
        row = out[i, 0, :, 0]
        if kind == "spike":
            width = min(draw(1, 3), length)
            a = draw(0, length - width)
            size = 0.35 + 0.15 * float(torch.rand(1, generator=g))
            seg = row[a:a + width]
            row[a:a + width] = torch.where(seg > 0.5, seg - size, seg + size)
        elif kind == "dropout":
            width = min(length, draw(max(1, length // 8), max(1, length // 4)))
            a = draw(0, length - width)
            row[a:a + width] = 0.01
        else:
            width = min(length, draw(max(2, length // 4), max(2, length // 2)))
            a = draw(0, length - width)
            cycles = 10 + 6 * float(torch.rand(1, generator=g))
            t = torch.arange(a, a + width, dtype=torch.float32) / length
            phase = 2 * math.pi * float(torch.rand(1, generator=g))
            eps = torch.randn(width, generator=g)
            row[a:a + width] = 0.5 + 0.3 * torch.sin(2 * math.pi * cycles * t + phase) + noise * eps
        row.clamp_(0.01, 0.99)
        labels[i] = 1
        kind_of[i] = kind
    return out, labels, kind_of


class Sines(DataSet):
    """``dataset=sines``: ``num_train`` + ``num_test`` generated sequences (the test split with
    seed + 1); label = number of sinusoids - 1; with ``glitches`` > 0 that fraction of the
    test split is glitched and the labels are 0 normal, 1 glitched."""

    checks = {"glitches": optional(number(0, 1), "null or a fraction in [0, 1]"),
              "glitch_kinds": optional(Rule(lambda v: not isinstance(v, str) and len(v) > 0
                                            and all(k in GLITCH_KINDS for k in v),
                                            "a non-empty list of " + ", ".join(GLITCH_KINDS)),
                                       "null (all kinds) or a non-empty list of "
                                       + ", ".join(GLITCH_KINDS)),
              "num_train": integer(2, what="an integer > 1"), "num_test": integer(1),
              "length": integer(2), "noise": number(0, 0.5),
              "max_components": integer(1, "an integer >= 1"),
              "generator_seed": integer(0)}

    def __init__(self, num_train: int = 10000, num_test: int = 2000, length: int = 64,
                 noise: float = 0.05, max_components: int = 3, generator_seed: int = 0,
                 glitches: float | None = None, glitch_kinds=None, **common):
        super().__init__(**common)
        self.num_train, self.num_test = int(num_train), int(num_test)
        self.spec = {"length": int(length), "noise": float(noise),
                     "max_components": int(max_components)}
        self.generator_seed = int(generator_seed)
        # null (none, all kinds) by default: runs from before these keys resume without news
        self.glitches = float(glitches or 0.0)
        self.glitch_kinds = list(GLITCH_KINDS if glitch_kinds is None else glitch_kinds)

    def generated_bytes(self) -> int:
        # float32 sequences, and the generator's temporaries (one wave per component)
        per = 4 * self.spec["length"] * (self.spec["max_components"] + 3)
        return max(self.num_train, self.num_test) * per + self.num_test * 4 * self.spec["length"]

    def read(self) -> ImageData:
        tx, ty = make_sines(self.num_train, self.generator_seed, **self.spec)
        ex, ey = make_sines(self.num_test, self.generator_seed + 1, **self.spec)
        if self.glitches > 0:
            ex, ey, _ = inject_glitches(ex, self.glitches, self.generator_seed + 2,
                                        self.spec["noise"], self.glitch_kinds)
            return ImageData(self.name, tx, torch.zeros_like(ty), ex, ey,
                             classes=list(GLITCH_CLASSES))
        return ImageData(self.name, tx, ty, ex, ey,
                         classes=sine_classes(self.spec["max_components"]))
