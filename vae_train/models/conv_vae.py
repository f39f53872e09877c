"""Convolutional VAE: strided conv encoder, transposed-conv decoder, any image side."""

from __future__ import annotations

from vae_train.checks import int_list, integer
from vae_train.models.gaussian import GaussianVAE
from vae_train.nets import ConvDecoder, ConvEncoder, mlp
from vae_train.nets.mlp import ACTIVATION


class ConvVAE(GaussianVAE):
    checks = {"channels": int_list(nonempty=True), "hidden_dim": integer(1),
              "activation": ACTIVATION}

    def __init__(self, input_shape, latent_dim: int = 32, channels=(32, 64), hidden_dim: int = 256,
                 activation: str = "relu", num_classes: int = 0, likelihood=None):
        super().__init__(input_shape, latent_dim, num_classes, likelihood)
        body = ConvEncoder(self.input_shape, channels, hidden_dim, activation)
        self.encoder = body
        self.to_latent = mlp(hidden_dim, [], 2 * self.latent_dim)
        self.decoder = ConvDecoder(body, self.latent_dim, self.input_shape[0], activation)

    def encoder_forward(self, x, y):
        return self.to_latent(self.encoder(x).relu())

    def decoder_forward(self, z, y):
        return self.decoder(z)
