"""Conditional VAE (Sohn et al. 2015): encoder and decoder both see a one-hot class label,
so p(x|z, y) separates class (y) from style (z) and samples can be drawn per class."""

from __future__ import annotations

import math

import torch

from vae_train.checks import int_list
from vae_train.errors import UserError
from vae_train.models.gaussian import GaussianVAE
from vae_train.nets import mlp
from vae_train.nets.mlp import ACTIVATION


class CVAE(GaussianVAE):
    conditional = True
    checks = {"hidden_dims": int_list(), "activation": ACTIVATION}

    def __init__(self, input_shape, num_classes: int, latent_dim: int = 20,
                 hidden_dims=(512, 256), activation: str = "relu", likelihood=None):
        if num_classes < 2:
            raise UserError("model=cvae needs a labelled data set with at least 2 classes")
        super().__init__(input_shape, latent_dim, num_classes, likelihood)
        d = math.prod(self.input_shape)
        self.encoder = mlp(d + num_classes, hidden_dims, 2 * self.latent_dim, activation)
        self.decoder = mlp(self.latent_dim + num_classes, list(hidden_dims)[::-1], d, activation)

    def encoder_forward(self, x, y):
        return self.encoder(torch.cat([x.flatten(1), self._onehot(y, x)], dim=1))

    def decoder_forward(self, z, y):
        return self.decoder(torch.cat([z, self._onehot(y, z)], dim=1))
