"""vae-train: train, sweep and compare variational autoencoders."""

from pathlib import Path

__version__ = "0.2.0"

_PKG = Path(__file__).resolve().parent
# The YAML configs: a wheel carries them inside the package, a source checkout at the top.
CONFIG_DIR = str(_PKG / "configs" if (_PKG / "configs").is_dir() else _PKG.parent / "configs")
