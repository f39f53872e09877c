"""vae-train: train, sweep and compare variational autoencoders."""

__version__ = "0.2.0"
