"""From a composed config to the objects a run needs: the data (on the device), the objective
and the model, with shapes and class counts taken from the data. Training, ``evaluate``,
``sample`` and the benchmark all build through :func:`build`."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from vae_train import distributed
from vae_train.data import DataModule, build_dataset
from vae_train.errors import UserError
from vae_train.losses import ELBO, BetaVAE, ModelObjective, Objective
from vae_train.models.base import LatentVariable, Model, OwnsObjective, SemiSupervised


def instantiate_node(node, group: str, **kwargs):
    """Build a config node's object; a wrong or foreign key becomes one line naming it."""
    try:
        return instantiate(node, **kwargs)
    except Exception as e:  # hydra wraps constructor errors
        cause = e.__cause__ or e
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError):
            raise UserError(f"{group}={node.get('_target_', '?').rsplit('.', 1)[-1]}: "
                            f"{str(cause).splitlines()[0]} (see docs/ for the {group} options)"
                            ) from None
        raise


def build(cfg: DictConfig, device: torch.device):
    """(data module, objective, model) for a config, on ``device``."""
    dataset = build_dataset(cfg.dataset)
    with distributed.rank0_first():   # several processes: one downloads/renders, then the rest
        data = dataset.load()
    dm = DataModule(data, device, dataset.binarize, dataset.val_size, dataset.split_seed,
                    dataset.binarize_seed)
    objective = instantiate_node(cfg.loss, "loss")
    if not isinstance(objective, Objective):
        raise UserError(f"loss._target_={cfg.loss._target_} builds a {type(objective).__name__}, "
                        "not a vae_train.losses.Objective")
    likelihood = objective.make_likelihood(dm.shape[0])
    model = instantiate_node(cfg.model, "model", input_shape=dm.shape,
                             num_classes=dm.num_classes, likelihood=likelihood)
    name = cfg.model._target_.rsplit(".", 1)[-1]
    if not isinstance(model, Model):
        raise UserError(f"model._target_={cfg.model._target_} builds a {type(model).__name__}, "
                        "not a vae_train.models.base.Model (see docs/adding.md)")
    if isinstance(model, OwnsObjective):
        if not isinstance(objective, ELBO) or isinstance(objective, BetaVAE):
            raise UserError(f"model {name} trains its own objective ({model.objective_doc}); "
                            "drop the loss= choice (the default, loss=elbo, supplies only "
                            "loss.likelihood/sigma/learn_sigma)")
        objective = ModelObjective(likelihood=objective.likelihood, sigma=objective.sigma,
                                   learn_sigma=objective.learn_sigma)
    elif not isinstance(model, LatentVariable):
        raise UserError(f"model {name} has no likelihood bound (it is not a LatentVariable) and "
                        "does not train its own objective (OwnsObjective); see docs/adding.md")
    if isinstance(model, SemiSupervised):
        n = dataset.labeled if dataset.labeled is not None else model.default_labeled
        model.use_labels(dm.labeled_subset(n, model.labeled_seed), dm.batch, len(dm.train))
    elif dataset.labeled is not None:
        raise UserError(f"dataset.labeled={dataset.labeled}: only a semi-supervised model "
                        "(model=m2) can learn from part of the labels; drop dataset.labeled")
    return dm, objective.to(device), model.to(device)
