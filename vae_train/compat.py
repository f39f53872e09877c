"""Reading what earlier versions of vae-train wrote, in one place.

Run directories and checkpoints written by vae-train 0.1 stay usable (``tests/test_compat.py``
evaluates, samples and resumes one):

* their ``dataset`` config node names the set by ``name`` and has no ``_target_`` (data sets
  were chosen by name then; now every node builds its class from ``_target_``).
"""

from __future__ import annotations

from omegaconf import DictConfig, open_dict

# The data sets of vae-train 0.1, by the ``dataset.name`` its configs wrote.
DATASETS_V0_1 = {
    "mnist": "vae_train.data.torchvision_sets.MNIST",
    "fashion_mnist": "vae_train.data.torchvision_sets.FashionMNIST",
    "kmnist": "vae_train.data.torchvision_sets.KMNIST",
    "cifar10": "vae_train.data.torchvision_sets.CIFAR10",
    "synthetic": "vae_train.data.synthetic.Synthetic",
    "sines": "vae_train.data.sines.Sines",
    "dsprites": "vae_train.data.dsprites.DSprites",
}


def upgrade_config(cfg: DictConfig) -> DictConfig:
    """A run's saved config, brought up to date (see the module)."""
    data = cfg.get("dataset")
    if data is not None and not data.get("_target_") and data.get("name") in DATASETS_V0_1:
        with open_dict(cfg):
            cfg.dataset._target_ = DATASETS_V0_1[data.name]
    return cfg
