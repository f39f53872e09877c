"""Convolutional VAE, any image side: a residual conv body (``body=resnet``, the default of
``configs/model/conv_vae.yaml``) or the strided conv body of vae-train 0.1 (``body=plain``)."""

from __future__ import annotations

from vae_train.checks import BOOLEAN, int_list, integer, one_of
from vae_train.models.gaussian import GaussianVAE
from vae_train.nets import ConvDecoder, ConvEncoder, ResNetDecoder, ResNetEncoder, mlp
from vae_train.nets.mlp import ACTIVATION
from vae_train.nets.resnet import BLOCKS, DOWNSAMPLES, NORM


class ConvVAE(GaussianVAE):
    checks = {"channels": int_list(nonempty=True), "hidden_dim": integer(1),
              "activation": ACTIVATION, "body": one_of("plain", "resnet"), "blocks": BLOCKS,
              "norm": NORM, "attention": BOOLEAN, "downsamples": DOWNSAMPLES}

    # The defaults are the YAML's but for ``body``: runs saved before the residual body have
    # no ``body`` key (and every other key of 0.1 saved) and were built with the strided body.
    def __init__(self, input_shape, latent_dim: int = 16, channels=(32, 64), hidden_dim: int = 256,
                 activation: str = "silu", body: str = "plain", blocks=1, norm: str = "group",
                 attention: bool = False, downsamples: int | None = None, num_classes: int = 0,
                 likelihood=None):
        super().__init__(input_shape, latent_dim, num_classes, likelihood)
        self.body = body
        out_channels = self.output_shape[0]
        if body == "plain":
            enc = ConvEncoder(self.input_shape, channels, hidden_dim, activation)
            self.encoder = enc
            self.to_latent = mlp(hidden_dim, [], 2 * self.latent_dim)
            self.decoder = ConvDecoder(enc, self.latent_dim, out_channels, activation)
        else:
            self.encoder = ResNetEncoder(self.input_shape, channels, 2 * self.latent_dim,
                                         blocks=blocks, norm=norm, act=activation,
                                         attention=attention, downsamples=downsamples)
            self.to_latent = None
            self.decoder = ResNetDecoder(self.encoder, self.latent_dim, out_channels)

    def encoder_forward(self, x, y):
        if self.to_latent is None:
            return self.encoder(x)
        return self.to_latent(self.encoder(x).relu())

    def decoder_forward(self, z, y):
        return self.decoder(z)
