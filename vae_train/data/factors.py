"""The factors of variation of a data set generated from known factors (``dataset=dsprites``):
every combination of factor indices is one example, and the factors are what disentanglement
metrics score a code against."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class FactorGrid:
    """A data set's factors of variation: every combination of factor indices is an image."""

    names: list[str]
    sizes: list[int]
    values: list[list[float]]        # the value of each index of each factor
    render: Callable                 # (N, K) int factor indices -> uint8 images (N, C, H, W)
    label_factor: int | None = None  # the factor that is the class label y (dsprites: shape)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` independent, uniform draws of every factor: (n, K) int64."""
        return np.stack([rng.integers(0, s, n) for s in self.sizes], axis=1).astype(np.int64)
