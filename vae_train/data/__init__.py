"""Data sets (torchvision parsers and generated ones) and in-memory batching."""

from vae_train.data.batches import DataModule, Split, to_float
from vae_train.data.sources import ImageData, load_image_data

__all__ = ["DataModule", "Split", "to_float", "ImageData", "load_image_data"]
