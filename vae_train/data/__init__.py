"""Data sets (each a class built from the ``dataset`` config node: torchvision's sets, generated
ones, your own) and the in-memory splits that batches are indexed from."""

from vae_train.data.base import DataSet, ImageData
from vae_train.data.batches import DataModule, Split, to_float
from vae_train.data.factors import FactorGrid

__all__ = ["DataModule", "DataSet", "FactorGrid", "ImageData", "Split", "to_float"]
