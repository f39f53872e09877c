"""Reading what earlier versions of vae-train wrote, in one place.

Run directories and checkpoints written by vae-train 0.1 stay usable (``tests/test_compat.py``
evaluates, samples and resumes one):

* their ``dataset`` config node names the set by ``name`` and has no ``_target_`` (data sets
  were chosen by name then; now every node builds its class from ``_target_``).

And a run resumes with the model it was trained with, whatever the model's YAML says now
(``conv_vae``'s default body became the residual one in 0.2; a 0.1 or early 0.2 run's node has
no ``body`` key and is the strided ``plain`` body): :func:`model_overrides`.
"""

from __future__ import annotations

from omegaconf import DictConfig, open_dict

# Models whose body became a choice: the body a saved node without ``body`` was built with.
BODY_BEFORE_0_2 = {"vae_train.models.conv_vae.ConvVAE": "plain",
                   "vae_train.models.cvae.CVAE": "mlp",
                   "vae_train.models.vqvae.VQVAE": "plain"}

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


def _override_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_override_value(x) for x in v) + "]"
    text = str(v)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def model_overrides(saved_config: dict | None) -> list[str]:
    """Overrides that rebuild a checkpoint's model node as it was saved (``++model.key=value``
    for each of its keys, and the body of its version where the node has none), to go before
    the user's new overrides on resume."""
    model = (saved_config or {}).get("model")
    if not isinstance(model, dict) or "_target_" not in model:
        return []
    out = [f"++model.{k}={_override_value(v)}" for k, v in model.items()
           if k != "_target_" and not isinstance(v, dict)]
    body = BODY_BEFORE_0_2.get(model["_target_"])
    if body is not None and "body" not in model:
        out.append(f"++model.body={body}")
    return out
