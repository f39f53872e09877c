"""Conditional VAE (Sohn et al. 2015): encoder and decoder both see a one-hot class label,
so p(x|z, y) separates class (y) from style (z) and samples can be drawn per class.

``body=mlp``: dense layers on the flattened image and the label. ``body=resnet``: the residual
conv body (``vae_train/nets/resnet.py``); the encoder sees the label as constant input
channels, the decoder's dense layer sees it beside z."""

from __future__ import annotations

import math

import torch

from vae_train.checks import BOOLEAN, int_list, one_of
from vae_train.errors import UserError
from vae_train.models.gaussian import GaussianVAE
from vae_train.nets import ResNetDecoder, ResNetEncoder, mlp
from vae_train.nets.mlp import ACTIVATION
from vae_train.nets.resnet import BLOCKS, DOWNSAMPLES, NORM


class CVAE(GaussianVAE):
    conditional = True
    checks = {"hidden_dims": int_list(), "activation": ACTIVATION,
              "body": one_of("mlp", "resnet"), "channels": int_list(nonempty=True),
              "blocks": BLOCKS, "norm": NORM, "attention": BOOLEAN, "downsamples": DOWNSAMPLES}

    def __init__(self, input_shape, num_classes: int, latent_dim: int = 20,
                 hidden_dims=(512, 256), activation: str = "relu", body: str = "mlp",
                 channels=(32, 64), blocks=1, norm: str = "group", attention: bool = False,
                 downsamples: int | None = None, likelihood=None):
        if num_classes < 2:
            raise UserError("model=cvae needs a labelled data set with at least 2 classes")
        super().__init__(input_shape, latent_dim, num_classes, likelihood)
        self.body = body
        if body == "mlp":
            d, out = math.prod(self.input_shape), math.prod(self.output_shape)
            self.encoder = mlp(d + num_classes, hidden_dims, 2 * self.latent_dim, activation)
            self.decoder = mlp(self.latent_dim + num_classes, list(hidden_dims)[::-1], out,
                               activation)
        else:
            self.encoder = ResNetEncoder(self.input_shape, channels, 2 * self.latent_dim,
                                         blocks=blocks, norm=norm, act=activation,
                                         attention=attention, downsamples=downsamples,
                                         extra_in=num_classes)
            self.decoder = ResNetDecoder(self.encoder, self.latent_dim + num_classes,
                                         self.output_shape[0])

    def encoder_forward(self, x, y):
        if self.body == "mlp":
            return self.encoder(torch.cat([x.flatten(1), self._onehot(y, x)], dim=1))
        return self.encoder(x, self._onehot(y, x))

    def decoder_forward(self, z, y):
        return self.decoder(torch.cat([z, self._onehot(y, z)], dim=1))
