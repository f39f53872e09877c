"""vae-train: train, sweep and compare variational autoencoders."""

from pathlib import Path

__version__ = "0.2.0"

_PKG = Path(__file__).resolve().parent
# The YAML configs: a wheel carries them inside the package, a source checkout at the top.
CONFIG_DIR = str(_PKG / "configs" if (_PKG / "configs").is_dir() else _PKG.parent / "configs")


def load(run, checkpoint: str = "best", device: str = "auto", data_root=None,
         trust_run_code: bool = False):
    """A trained run as a :class:`vae_train.api.Trained` (``encode``, ``decode``,
    ``reconstruct``, ``sample``, ``log_prob``, ``interpolate``); see :func:`vae_train.api.load`.
    (Imported on first use, so ``import vae_train`` stays light.)"""
    from vae_train.api import load as _load

    return _load(run, checkpoint, device, data_root, trust_run_code)
