"""Reusable encoder and decoder bodies, sized from the data shape."""

from vae_train.nets.conv import ConvDecoder, ConvEncoder
from vae_train.nets.mlp import mlp
from vae_train.nets.resnet import ResNetDecoder, ResNetEncoder

__all__ = ["mlp", "ConvEncoder", "ConvDecoder", "ResNetEncoder", "ResNetDecoder"]
