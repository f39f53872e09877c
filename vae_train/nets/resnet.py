"""Residual convolutional encoder and its mirror-image decoder, any image side.

The encoder halves the side several times (a stride-2 3x3 convolution; the side rounds up:
28 -> 14 -> 7), and after each halving runs ``blocks`` pre-activation residual blocks (norm,
activation, 3x3 conv, twice, added to the input) at that resolution. ``channels`` gives the
width after each halving, finest first, as the strided body's ``channels`` does. The number of
halvings is ``downsamples`` when given; otherwise one per entry of ``channels``, and more while
the shorter side is above ``lowest`` (8) pixels, the last width repeating (``channels=[32,
64]``: 28 and 32 px halve twice, to 7x7 and 8x8; 64 px three times; 128 px four times). At the
lowest resolution an optional self-attention block lets every position see every other.
The decoder mirrors it: at each resolution on the way up the same blocks, then a transposed
3x3 convolution of stride 2 back to exactly the side the encoder saw, the last one to the
output channels.

``norm`` is ``group`` (GroupNorm: at most 8 groups, at least 4 channels each; the same in
training and evaluation), ``batch`` (BatchNorm) or ``none``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vae_train.checks import Rule, integer, is_int, one_of, optional
from vae_train.errors import UserError
from vae_train.nets.mlp import activation

NORMS = ("group", "batch", "none")
# The rules of the options a model with this body passes on (see vae_train.checks).
NORM = one_of(*NORMS)
BLOCKS = Rule(lambda v: v >= 0 if is_int(v) else (not isinstance(v, str) and len(v) > 0
                                                   and all(is_int(b) and b >= 0 for b in v)),
              "an integer >= 0 or a non-empty list of them (one per resolution)")
DOWNSAMPLES = optional(integer(1))
# The automatic choice halves the side until the shorter side is at most this many pixels.
LOWEST_SIDE = 8


def halve(side: int) -> int:
    """The side after a stride-2 3x3 convolution with padding 1 (rounded up)."""
    return (side + 1) // 2


def halvings_to(side: int, lowest: int = LOWEST_SIDE) -> int:
    """How many halvings bring ``side`` down to ``lowest`` pixels or fewer."""
    n = 0
    while side > lowest:
        side, n = halve(side), n + 1
    return n


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        groups = max(1, min(8, channels // 4))
        while channels % groups:
            groups -= 1
        return nn.GroupNorm(groups, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm {kind!r} is not known; use one of {', '.join(NORMS)}")


class ResBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))), width kept; the last conv starts at zero, so a
    block starts as the identity."""

    def __init__(self, channels: int, norm: str = "group", act: str = "silu"):
        super().__init__()
        self.body = nn.Sequential(
            norm_layer(norm, channels), activation(act),
            nn.Conv2d(channels, channels, 3, padding=1),
            norm_layer(norm, channels), activation(act),
            nn.Conv2d(channels, channels, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SelfAttention(nn.Module):
    """One head of dot-product self-attention over the positions of a feature map, added to
    its input (the output projection starts at zero)."""

    def __init__(self, channels: int, norm: str = "group"):
        super().__init__()
        self.norm = norm_layer(norm, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v)                 # (B, h*w, C)
        return x + self.out(a.transpose(1, 2).reshape(b, c, h, w))


def per_level(values, levels: int, key: str, shape: str) -> list[int]:
    """One number for each of ``levels`` resolutions: ``values`` (a single number: the same
    for all) with its last entry repeated."""
    values = [int(values)] if is_int(values) else [int(v) for v in values]
    if len(values) > levels:
        raise UserError(f"{key} has {len(values)} stages, more than the {levels} halvings of "
                        f"the side of {shape} inputs; give at most {levels}, or more halvings "
                        "with model.downsamples")
    return values + values[-1:] * (levels - len(values))


class ResNetEncoder(nn.Module):
    """Images (B, C, H, W) -> ``out_dim`` numbers (a dense layer on the flattened features),
    or, with ``out_dim=None``, the feature map of ``feature_shape`` (with ``out_channels``: a
    1x1 convolution to that many channels). ``extra_in`` numbers per example (a one-hot label)
    enter as that many constant input channels."""

    def __init__(self, input_shape, channels, out_dim: int | None = None,
                 out_channels: int | None = None, blocks=1, norm: str = "group",
                 act: str = "silu", attention: bool = False, downsamples: int | None = None,
                 extra_in: int = 0, lowest: int = LOWEST_SIDE):
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        shape = f"{h}x{w}"
        if downsamples is None:
            n = max(len(channels), halvings_to(min(h, w), lowest))
        else:
            n = int(downsamples)
        most = halvings_to(min(h, w), 1)
        if downsamples is not None and not 1 <= n <= most:
            raise UserError(f"model.downsamples={n} does not fit {shape} inputs: their side "
                            f"can be halved 1 to {most} times")
        if n > most:
            raise UserError(f"model.channels has {len(channels)} stages, too many for {shape} "
                            f"inputs (their side can be halved at most {most} times); use fewer "
                            "stages")
        self.hs, self.ws = [h], [w]
        for _ in range(n):
            self.hs.append(halve(self.hs[-1]))
            self.ws.append(halve(self.ws[-1]))
        self.widths = per_level(channels, n, "model.channels", shape)
        self.blocks = per_level(blocks, n, "model.blocks", shape)
        self.norm, self.act, self.attention = norm, act, bool(attention)
        self.extra_in = int(extra_in)
        layers: list[nn.Module] = []
        cin = c + self.extra_in
        for i, width in enumerate(self.widths):
            layers.append(nn.Conv2d(cin, width, 3, stride=2, padding=1))
            layers += [ResBlock(width, norm, act) for _ in range(self.blocks[i])]
            cin = width
        if self.attention:
            layers.append(SelfAttention(cin, norm))
        layers += [norm_layer(norm, cin), activation(act)]
        if out_channels is not None:
            layers.append(nn.Conv2d(cin, int(out_channels), 1))
            cin = int(out_channels)
        self.features = nn.Sequential(*layers)
        self.feature_shape = (cin, self.hs[-1], self.ws[-1])
        self.head = None if out_dim is None else nn.Linear(math.prod(self.feature_shape),
                                                           int(out_dim))

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        if self.extra_in:
            if extra is None:
                raise ValueError("this encoder is conditional: it needs its extra input")
            planes = extra.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, planes], dim=1)
        h = self.features(x)
        return h if self.head is None else self.head(h.flatten(1))


class ResNetDecoder(nn.Module):
    """The encoder's mirror, to (B, ``out_channels``, H, W): from ``in_dim`` numbers (a dense
    layer to the lowest resolution's feature map) or, with ``in_dim=None``, from a feature
    map at the lowest resolution of ``in_channels`` channels (default: the encoder's)."""

    def __init__(self, encoder: ResNetEncoder, in_dim: int | None, out_channels: int,
                 in_channels: int | None = None):
        super().__init__()
        widths, norm, act = encoder.widths, encoder.norm, encoder.act
        top = widths[-1]
        self.lowest = (top, encoder.hs[-1], encoder.ws[-1])
        if in_dim is None:
            cin = encoder.feature_shape[0] if in_channels is None else int(in_channels)
            self.fc, self.stem = None, nn.Conv2d(cin, top, 3, padding=1)
        else:
            self.fc, self.stem = nn.Linear(int(in_dim), math.prod(self.lowest)), None
        layers: list[nn.Module] = []
        if encoder.attention:
            layers.append(SelfAttention(top, norm))
        for i in reversed(range(len(widths))):
            layers += [ResBlock(widths[i], norm, act) for _ in range(encoder.blocks[i])]
            cout = widths[i - 1] if i > 0 else int(out_channels)
            # a transposed stride-2 3x3 conv gives 2s - 1 (+1 with output_padding): the side
            # the encoder halved, odd or even
            pad = (int(encoder.hs[i] == 2 * encoder.hs[i + 1]),
                   int(encoder.ws[i] == 2 * encoder.ws[i + 1]))
            layers += [norm_layer(norm, widths[i]), activation(act),
                       nn.ConvTranspose2d(widths[i], cout, 3, stride=2, padding=1,
                                          output_padding=pad)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, *self.lowest) if self.fc is not None else self.stem(z)
        return self.body(h)
