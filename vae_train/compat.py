"""Reading what earlier versions of vae-train wrote, in one place.

Run directories and checkpoints written by vae-train 0.1 stay usable (``tests/test_compat.py``
evaluates, samples and resumes one):

* their ``dataset`` config node names the set by ``name`` and has no ``_target_`` (data sets
  were chosen by name then; now every node builds its class from ``_target_``).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

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


def dataset_node(node):
    """A ``dataset`` node as it is written now: with a ``_target_`` (added from ``name`` to a
    node written by 0.1)."""
    if node.get("_target_") or node.get("name") not in DATASETS_V0_1:
        return node
    node = OmegaConf.create(OmegaConf.to_container(node) if isinstance(node, DictConfig)
                            else dict(node))
    with open_dict(node):
        node["_target_"] = DATASETS_V0_1[node["name"]]
    return node


def upgrade_config(cfg: DictConfig) -> DictConfig:
    """A run's saved config, brought up to date (see the module)."""
    if "dataset" in cfg:
        with open_dict(cfg):
            cfg.dataset = dataset_node(cfg.dataset)
    return cfg
