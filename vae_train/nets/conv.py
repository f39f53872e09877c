"""Strided convolutional encoder and its mirror-image decoder.

Each encoder stage is a 4x4 convolution with stride 2 and padding 1, which halves the side
(rounding down). The decoder records the sides the encoder saw and undoes each halving with a
transposed convolution, adding ``output_padding`` where a side was odd, so any input side
(28, 32, 64, ...) comes back exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vae_train.nets.mlp import activation


def _sides(side: int, stages: int) -> list[int]:
    sides = [side]
    for _ in range(stages):
        sides.append((sides[-1] + 2 - 4) // 2 + 1)
    return sides


class ConvEncoder(nn.Module):
    """Conv stages, then a dense layer to ``out_dim`` numbers (``out_dim=None``: no dense
    layer, the output is the feature map of ``feature_shape``)."""

    def __init__(self, input_shape, channels, out_dim: int | None, act: str = "relu"):
        super().__init__()
        c, h, w = input_shape
        self.hs, self.ws = _sides(h, len(channels)), _sides(w, len(channels))
        if min(self.hs[-1], self.ws[-1]) < 1:
            from vae_train.errors import UserError
            raise UserError(f"model.channels has {len(channels)} stages, too many for "
                            f"{h}x{w} images; use fewer stages")
        layers: list[nn.Module] = []
        for ch in channels:
            layers += [nn.Conv2d(c, int(ch), 4, stride=2, padding=1), activation(act)]
            c = int(ch)
        self.features = nn.Sequential(*layers)
        self.feature_shape = (c, self.hs[-1], self.ws[-1])
        self.head = None if out_dim is None else nn.Linear(math.prod(self.feature_shape), out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return h if self.head is None else self.head(h.flatten(1))


class ConvDecoder(nn.Module):
    """The encoder's mirror: a dense layer from ``in_dim`` numbers (``in_dim=None``: the input
    is already a feature map of the encoder's ``feature_shape``), then transposed convs."""

    def __init__(self, encoder: ConvEncoder, in_dim: int | None, out_channels: int,
                 act: str = "relu"):
        super().__init__()
        self.feature_shape = encoder.feature_shape
        self.fc = None if in_dim is None else nn.Sequential(
            nn.Linear(in_dim, math.prod(self.feature_shape)), activation(act))
        chans = [m.out_channels for m in encoder.features if isinstance(m, nn.Conv2d)]
        ins = [m.in_channels for m in encoder.features if isinstance(m, nn.Conv2d)]
        ins[0] = out_channels
        layers: list[nn.Module] = []
        n = len(chans)
        for i in reversed(range(n)):
            pad = (encoder.hs[i] % 2, encoder.ws[i] % 2)
            layers.append(nn.ConvTranspose2d(chans[i], ins[i], 4, stride=2, padding=1,
                                             output_padding=pad))
            if i > 0:
                layers.append(activation(act))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z if self.fc is None else self.fc(z).view(-1, *self.feature_shape)
        return self.deconv(h)
