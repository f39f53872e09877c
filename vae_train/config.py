"""The training config as a whole (``configs/train.yaml``): the rules of its nodes that build
no class of ours, gathered from the modules that own them, and the check of every value
before any data is read (:func:`validate`). The ``model``, ``loss`` and ``dataset`` nodes are
checked by the rules of the classes their ``_target_`` names (see :mod:`vae_train.checks`)."""

from __future__ import annotations

from omegaconf import DictConfig

from vae_train import checks
from vae_train.checks import BOOLEAN, integer
from vae_train.device import DEVICE_CHECKS
from vae_train.logging import label_rules, logger_specs
from vae_train.training.optim import OPTIMIZER_CHECKS, SCHEDULE_CHECKS
from vae_train.training.trainer import TRAINER_CHECKS

# node path -> rules of its keys; "" holds the top-level keys.
FIXED_RULES = {
    "optimizer": OPTIMIZER_CHECKS,
    "optimizer.lr_schedule": SCHEDULE_CHECKS,
    "trainer": TRAINER_CHECKS,
    "device": DEVICE_CHECKS,
    "": {"seed": integer(0), "overwrite": BOOLEAN, "trust_run_code": BOOLEAN,
         **label_rules()},   # tags: a list of labels; notes: null or one string
}


def _fixed(cfg: DictConfig) -> dict:
    """The fixed nodes' rules and those of the callbacks the config names."""
    from vae_train.callbacks import callback_rules

    return {**FIXED_RULES, **callback_rules(cfg.get("callbacks"))}


def rules(cfg: DictConfig) -> dict[str, checks.Rule]:
    """Full key -> rule, for every checked key of a composed training config."""
    return checks.all_rules(cfg, _fixed(cfg))


def validate(cfg: DictConfig) -> None:
    """Every value of a composed training config against its rule; the first bad one is one
    line naming its full key (:class:`vae_train.errors.UserError`)."""
    checks.validate(cfg, _fixed(cfg))
    logger_specs(cfg)   # an unknown logger option or a missing extra, before data is read
