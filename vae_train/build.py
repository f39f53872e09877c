"""From a composed config to the objects a run needs: the data (on the device), the objective
and the model, with shapes and class counts taken from the data. Training, ``evaluate``,
``sample`` and the benchmark all build through :func:`build`."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vae_train import distributed, patches
from vae_train import memory as memory_mod
from vae_train.data import DataModule, DataSet, ImageData
from vae_train.checks import locate
from vae_train.errors import UserError
from vae_train.losses import ELBO, BetaVAE, ModelObjective, Objective
from vae_train.models.base import LatentVariable, Model, OwnsObjective, SemiSupervised


def instantiate_node(node, group: str, kind: type, **kwargs):
    """Build a config node's object, which must be a ``kind``; a wrong or foreign key, or a
    ``_target_`` that builds something else, becomes one line naming it."""
    try:
        obj = instantiate(node, **kwargs)
    except Exception as e:  # hydra wraps constructor errors
        cause = e.__cause__ or e
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError):
            raise UserError(f"{group}={node.get('_target_', '?').rsplit('.', 1)[-1]}: "
                            f"{str(cause).splitlines()[0]} (see docs/ for the {group} options)"
                            ) from None
        raise
    if not isinstance(obj, kind):
        raise UserError(f"{group}._target_={node.get('_target_')} builds a "
                        f"{type(obj).__name__}, not a {kind.__module__}.{kind.__name__} "
                        "(see docs/adding.md)")
    return obj


def load_image_data(node) -> ImageData:
    """Build the data set a ``dataset`` config node describes, and read it."""
    return instantiate_node(node, "dataset", DataSet).load()


def build(cfg: DictConfig, device: torch.device, memory: str = "train"):
    """(data module, objective, model) for a config, on ``device``. Before the model is
    allocated, its memory is estimated (:mod:`vae_train.memory`): ``memory="train"`` counts a
    training step (weights, gradients, optimizer state, one batch's activations),
    ``"weights"`` the weights alone (evaluate, sample); what cannot fit is refused."""
    patches.lazy_dynamo()             # torch._dynamo: imported by torch.compile alone
    dataset = instantiate_node(cfg.dataset, "dataset", DataSet)
    with distributed.rank0_first():   # several processes: one downloads/renders, then the rest
        data = dataset.load()
    dm = DataModule(data, device, dataset.binarize, dataset.val_size, dataset.split_seed,
                    dataset.binarize_seed, dataset.in_memory, dataset.memory_share)
    objective = instantiate_node(cfg.loss, "loss", Objective)
    likelihood = objective.make_likelihood(dm.shape[-3], dm.values, dm.name)

    def make_model(lik=likelihood):
        return instantiate_node(cfg.model, "model", Model, input_shape=dm.shape,
                                num_classes=dm.num_classes, likelihood=lik)

    _check_memory(cfg, dm, objective, lambda: make_model(copy.deepcopy(likelihood)), device,
                  memory)
    model = make_model()
    name = cfg.model._target_.rsplit(".", 1)[-1]
    if isinstance(model, OwnsObjective):
        if not isinstance(objective, ELBO) or isinstance(objective, BetaVAE):
            raise UserError(f"model {name} trains its own objective ({model.objective_doc}); "
                            "drop the loss= choice (the default, loss=elbo, supplies only "
                            "loss.likelihood/sigma/learn_sigma)")
        objective = ModelObjective(likelihood=objective.likelihood, sigma=objective.sigma,
                                   learn_sigma=objective.learn_sigma,
                                   mixtures=objective.mixtures)
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


def _owns_objective(cfg) -> bool:
    try:
        cls = locate(str(cfg.model._target_), "model._target_")
    except UserError:
        return False
    return isinstance(cls, type) and issubclass(cls, OwnsObjective)


def _estimate_cache(cfg, x_shape, y, train: bool):
    """The file that keeps the memory estimate's activations for this configuration (its
    model and loss nodes, the batch's shape, the versions of torch and vae-train, and the
    model's source file as it is now), in the cache folder (``dataset.cache_dir``, else
    ``$VAE_CACHE_DIR``, else ``~/.cache/vae-train``)."""
    import hashlib
    import inspect
    import json

    from vae_train import __version__
    from vae_train.data.decode_cache import cache_root

    try:
        source = Path(inspect.getsourcefile(locate(cfg.model._target_)))
        stat = source.stat()
        spec = {"model": OmegaConf.to_container(cfg.model, resolve=True),
                "loss": OmegaConf.to_container(cfg.loss, resolve=True),
                "x": list(x_shape), "y": None if y is None else [list(y.shape), str(y.dtype)],
                "train": train, "torch": torch.__version__, "vae_train": __version__,
                "source": [str(source), stat.st_size, stat.st_mtime_ns]}
        key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
        root = cache_root(OmegaConf.select(cfg, "dataset.cache_dir", default=None))
    except Exception:  # noqa: BLE001 - no cache: the estimate is measured
        return None
    return root / "memory" / f"{key[:32]}.json"


def _check_memory(cfg, dm, objective, make_model, device, memory: str) -> None:
    train = memory == "train"
    batch = int(OmegaConf.select(cfg, "trainer.batch_size", default=128) or 128)
    if train:
        batch = min(batch, max(1, len(dm.train)))
    y = dm.train.y[:batch] if train and len(dm.train) else None
    opt = str(OmegaConf.select(cfg, "optimizer._target_", default="adam")).rsplit(".", 1)[-1]
    if train and _owns_objective(cfg):   # the model's own loss, as training will run it
        objective = ModelObjective(likelihood=objective.likelihood, sigma=objective.sigma,
                                   learn_sigma=objective.learn_sigma,
                                   mixtures=objective.mixtures)
    est = memory_mod.estimate(make_model, objective, (batch, *dm.shape), y, opt, train,
                              _estimate_cache(cfg, (batch, *dm.shape), y, train))
    memory_mod.check_fits(est, device, batch,
                          "make the model smaller (model.hidden_dims, model.latent_dim, ...), "
                          "or lower trainer.batch_size (or loss.k)" if train else
                          "evaluate it on a machine with more memory")
