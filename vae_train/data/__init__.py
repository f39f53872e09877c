"""Data sets (torchvision parsers and generated ones) and in-memory batching."""

from vae_train.data.batches import DataModule, Split
from vae_train.data.sources import ImageData, load_image_data

__all__ = ["DataModule", "Split", "ImageData", "load_image_data"]
