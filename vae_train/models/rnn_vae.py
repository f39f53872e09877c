"""Recurrent VAE over sequences (in the spirit of Bowman et al. 2016 and Fabius & van Amersfoort
2015): a GRU or LSTM encoder reads the T steps and gives a diagonal Gaussian q(z|x); a
recurrent decoder starts from a hidden state computed from z and receives z at every step.

A data set (N, C, H, W) is read as T = H steps of F = C * W features: sequence sets are
(N, 1, T, F), images are read row by row. The decoder never sees a previous frame, true or
predicted: its output is a function of z alone. Teacher forcing with the true previous frame
would let it copy x_{t-1} and make reconstruction trivial (z unused); feeding back its own
prediction adds no information (the prediction is already a function of z) but forces a
T-step Python loop. With z-only input p(x|z) factorises over steps given z, all steps run in
one fused RNN call, and sampling computes exactly what training optimised.
"""

from __future__ import annotations

import logging

from vae_train.checks import BOOLEAN, integer, one_of
from vae_train.distributions import BernoulliLikelihood
from vae_train.models.gaussian import GaussianVAE
from vae_train.nets.rnn import (CELLS, SequenceDecoder, SequenceEncoder, from_sequence,
                                to_sequence)

log = logging.getLogger(__name__)


class RNNVAE(GaussianVAE):
    checks = {"hidden_dim": integer(1), "num_layers": integer(1), "cell": one_of(*CELLS, what="one of gru, lstm"),
              "bidirectional": BOOLEAN}

    def __init__(self, input_shape, latent_dim: int = 16, hidden_dim: int = 256,
                 num_layers: int = 1, cell: str = "gru", bidirectional: bool = True,
                 num_classes: int = 0, likelihood=None):
        super().__init__(input_shape, latent_dim, num_classes, likelihood)
        c, self.steps, w = self.input_shape
        self.features = c * w
        self.encoder = SequenceEncoder(self.features, hidden_dim, num_layers,
                                       2 * self.latent_dim, cell, bidirectional)
        # each step's output: the likelihood's parameters of the step's C * W values
        self.decoder = SequenceDecoder(self.latent_dim, hidden_dim, num_layers,
                                       self.output_shape[0] * w, cell)
        if self.is_sequence and isinstance(self.likelihood, BernoulliLikelihood):
            log.warning("rnn_vae on a sequence set with loss.likelihood=bernoulli: for "
                        "real-valued sequences (dataset=sines) the loss is a cross-entropy, not "
                        "a log-density; use loss.likelihood=gaussian")

    @property
    def is_sequence(self) -> bool:
        """Sequence data: (1, T, F) with one column (F = 1), not images read row by row."""
        return self.input_shape[2] == 1

    def encoder_forward(self, x, y):
        return self.encoder(to_sequence(x))

    def decoder_forward(self, z, y):
        return from_sequence(self.decoder(z, self.steps), self.output_shape)
