"""A generated sequence data set: noisy sums of 1 to ``max_components`` sinusoids.

Each sequence has ``length`` time steps of one feature, stored like every data set as
(N, C, H, W) = (N, 1, T, 1) float32. A sequence draws its number of components k uniformly from
1..max_components (its label is k - 1), and per component a frequency (1 to 6 cycles over the
sequence), a phase and a relative amplitude; the sum is scaled to a peak of 0.4 * A around 0.5
(A, the overall amplitude, uniform in [0.5, 1]), Gaussian noise of standard deviation ``noise``
is added and the values are clipped to [0.01, 0.99], so they stay inside (0, 1) where the
Gaussian likelihood's sigmoid mean can reach them. Seeded: the same settings give the same data.
"""

from __future__ import annotations

import math

import torch

from vae_train.checks import integer, number
from vae_train.data.base import DataSet, ImageData

MIN_CYCLES, MAX_CYCLES = 1.0, 6.0


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


class Sines(DataSet):
    """``dataset=sines``: ``num_train`` + ``num_test`` generated sequences (the test split with
    seed + 1); label = number of sinusoids - 1."""

    checks = {"num_train": integer(2, what="an integer > 1"), "num_test": integer(1),
              "length": integer(2), "noise": number(0, 0.5),
              "max_components": integer(1, "an integer >= 1"),
              "generator_seed": integer(0)}

    def __init__(self, num_train: int = 10000, num_test: int = 2000, length: int = 64,
                 noise: float = 0.05, max_components: int = 3, generator_seed: int = 0,
                 **common):
        super().__init__(**common)
        self.num_train, self.num_test = int(num_train), int(num_test)
        self.spec = {"length": int(length), "noise": float(noise),
                     "max_components": int(max_components)}
        self.generator_seed = int(generator_seed)

    def generated_bytes(self) -> int:
        # float32 sequences, and the generator's temporaries (one wave per component)
        per = 4 * self.spec["length"] * (self.spec["max_components"] + 3)
        return max(self.num_train, self.num_test) * per + self.num_test * 4 * self.spec["length"]

    def read(self) -> ImageData:
        tx, ty = make_sines(self.num_train, self.generator_seed, **self.spec)
        ex, ey = make_sines(self.num_test, self.generator_seed + 1, **self.spec)
        return ImageData(self.name, tx, ty, ex, ey,
                         classes=sine_classes(self.spec["max_components"]))
