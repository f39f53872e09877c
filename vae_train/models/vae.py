"""The MLP VAE (Kingma & Welling 2014); defaults give the classic 784-400-20 network."""

from __future__ import annotations

import math

from vae_train.checks import int_list
from vae_train.models.gaussian import GaussianVAE
from vae_train.nets import mlp
from vae_train.nets.mlp import ACTIVATION


class VAE(GaussianVAE):
    checks = {"hidden_dims": int_list(), "activation": ACTIVATION}

    def __init__(self, input_shape, latent_dim: int = 20, hidden_dims=(400,),
                 activation: str = "relu", num_classes: int = 0, likelihood=None):
        super().__init__(input_shape, latent_dim, num_classes, likelihood)
        d = math.prod(self.input_shape)
        self.encoder = mlp(d, hidden_dims, 2 * self.latent_dim, activation)
        self.decoder = mlp(self.latent_dim, list(hidden_dims)[::-1],
                           math.prod(self.output_shape), activation)

    def encoder_forward(self, x, y):
        return self.encoder(x.flatten(1))

    def decoder_forward(self, z, y):
        return self.decoder(z)
