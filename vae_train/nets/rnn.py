"""Recurrent encoder and decoder bodies over sequences, and the image <-> sequence view.

Every data set is stored as (N, C, H, W). Read as a sequence it has T = H time steps of
F = C * W features: a sequence set is (N, 1, T, F), an image is read row by row.
"""

from __future__ import annotations

import torch
from torch import nn

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


def to_sequence(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, T=H, F=C*W): row t holds every channel's values of image row t."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, h, c * w)


def from_sequence(s: torch.Tensor, shape) -> torch.Tensor:
    """(B, T, F) -> (B, C, H, W), the inverse of :func:`to_sequence` for ``shape=(C, H, W)``."""
    c, h, w = shape
    return s.reshape(s.shape[0], h, c, w).permute(0, 2, 1, 3).contiguous()


class SequenceEncoder(nn.Module):
    """A GRU/LSTM over the T steps; the top layer's final hidden state (both directions when
    bidirectional) goes through a linear layer to ``out_dim`` numbers."""

    def __init__(self, features: int, hidden: int, layers: int, out_dim: int,
                 cell: str = "gru", bidirectional: bool = True):
        super().__init__()
        self.rnn = CELLS[cell](features, hidden, num_layers=layers, batch_first=True,
                               bidirectional=bidirectional)
        self.dirs = 2 if bidirectional else 1
        self.head = nn.Linear(self.dirs * hidden, out_dim)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        _, h = self.rnn(s)
        if isinstance(h, tuple):                   # LSTM: (h_n, c_n)
            h = h[0]
        top = h[-self.dirs:]                       # (dirs, B, hidden): the last layer
        return self.head(top.transpose(0, 1).reshape(s.shape[0], -1))


class SequenceDecoder(nn.Module):
    """z -> the initial hidden (and LSTM cell) state of every layer, and z is the input at
    every step; a linear layer maps each step's top hidden state to ``features`` numbers.

    The output is a deterministic function of z alone (no previous frame, true or predicted,
    is fed back), so p(x|z) factorises over steps and pixels given z and one fused RNN call
    computes all T steps.
    """

    def __init__(self, z_dim: int, hidden: int, layers: int, features: int, cell: str = "gru"):
        super().__init__()
        self.layers, self.hidden, self.lstm = layers, hidden, cell == "lstm"
        self.init = nn.Linear(z_dim, (2 if self.lstm else 1) * layers * hidden)
        self.rnn = CELLS[cell](z_dim, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, features)

    def forward(self, z: torch.Tensor, steps: int) -> torch.Tensor:
        b = z.shape[0]
        init = self.init(z).view(b, -1, self.layers, self.hidden).permute(1, 2, 0, 3)
        h0 = torch.tanh(init[0]).contiguous()      # (layers, B, hidden)
        state = (h0, init[1].contiguous()) if self.lstm else h0
        out, _ = self.rnn(z.unsqueeze(1).expand(b, steps, z.shape[1]), state)
        return self.head(out)                      # (B, T, features)
