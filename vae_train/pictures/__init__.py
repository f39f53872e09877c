"""Every picture vae-train draws: image grids (``grids``), line and scatter plots (``plots``),
and the choice of pictures for a model through the model contract (``figures``)."""

from vae_train.pictures.figures import (SampleOptions, sample_figures, save_figures,
                                        training_figures)

__all__ = ["SampleOptions", "sample_figures", "save_figures", "training_figures"]
