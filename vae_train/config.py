"""Checks on the composed config that run before any data is read, and device selection.

Every failure is a :class:`UserError` whose message starts with the key's full path.
"""

from __future__ import annotations

import logging
import math
import numbers

import torch
from omegaconf import DictConfig, OmegaConf

from vae_train.errors import UserError

log = logging.getLogger(__name__)

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


# (key, test, what the value must be)
CHECKS = [
    ("model.latent_dim", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("model.hidden_dim", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("model.hidden_dims", lambda v: all(_is_int(h) and h > 0 for h in v),
     "a list of positive integers"),
    ("model.channels", lambda v: len(v) > 0 and all(_is_int(h) and h > 0 for h in v),
     "a non-empty list of positive integers"),
    ("model.latent_dim2", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("model.disc_hidden_dims", lambda v: all(_is_int(h) and h > 0 for h in v),
     "a list of positive integers"),
    ("model.hidden_dims2", lambda v: all(_is_int(h) and h > 0 for h in v),
     "a list of positive integers"),
    # the second wave of models (their constructors check again, with the same words)
    ("model.num_codes", lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    ("model.code_dim", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("model.commitment", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    ("model.decay", lambda v: _is_num(v) and 0 < v < 1, "a number in (0, 1)"),
    ("model.restart_threshold", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    ("model.prior_epochs", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("model.prior_channels", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("model.prior_layers", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("model.num_latents", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("model.num_categories", lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    ("model.tau0", lambda v: _is_num(v) and v > 0, "a number > 0"),
    ("model.tau_min", lambda v: _is_num(v) and v > 0, "a number > 0"),
    ("model.anneal_rate", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    ("model.num_layers", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("model.alpha", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    ("model.labeled_weight", lambda v: v is None or (_is_num(v) and v >= 0),
     "null or a number >= 0"),
    ("model.labeled_batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("model.labeled_seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("model.classifier_dims", lambda v: all(_is_int(h) and h > 0 for h in v),
     "a list of positive integers"),
    ("loss.beta", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    ("loss.k", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("loss.free_bits", lambda v: _is_num(v) and v >= 0, "a number >= 0 (nats per dimension)"),
    ("loss.gamma", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    ("loss.C_max", lambda v: _is_num(v) and v >= 0, "a number >= 0 (nats)"),
    ("loss.C_stop_steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("loss.likelihood", lambda v: v in ("bernoulli", "gaussian"), "bernoulli or gaussian"),
    ("loss.sigma", lambda v: _is_num(v) and v > 0, "a number > 0"),
    ("loss.warmup_steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("optimizer.lr", lambda v: _is_num(v) and v > 0, "a number > 0"),
    ("optimizer.weight_decay", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    ("optimizer.momentum", lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("optimizer.betas", lambda v: len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v),
     "two numbers in [0, 1)"),
    ("optimizer.lr_schedule.name", lambda v: v in ("constant", "cosine", "step"),
     "constant, cosine or step"),
    ("optimizer.lr_schedule.warmup_steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("optimizer.lr_schedule.min_lr_ratio", lambda v: _is_num(v) and 0 <= v <= 1,
     "a number in [0, 1]"),
    ("optimizer.lr_schedule.step_epochs", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("optimizer.lr_schedule.gamma", lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("trainer.epochs", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("trainer.batch_size", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("trainer.eval_batch_size", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("trainer.grad_clip", lambda v: v is None or (_is_num(v) and v > 0), "null or a number > 0"),
    ("trainer.log_every_steps", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("trainer.num_images", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("trainer.image_every_epochs", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("trainer.nonfinite", lambda v: v in ("stop", "skip"), "stop or skip"),
    ("trainer.max_skipped_steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("dataset.train_size", lambda v: v is None or (_is_int(v) and v > 0),
     "null or a positive integer"),
    ("dataset.test_size", lambda v: v is None or (_is_int(v) and v > 0),
     "null or a positive integer"),
    ("dataset.val_size", lambda v: _is_num(v) and (0 < v < 1 or (_is_int(v) and v >= 1)),
     "a fraction in (0, 1) or a count >= 1"),
    ("dataset.binarize", lambda v: v in ("none", "static", "dynamic"), "none, static or dynamic"),
    ("dataset.split_seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("dataset.binarize_seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("dataset.generator_seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("dataset.labeled", lambda v: v is None or (_is_int(v) and v >= 1),
     "null or a positive integer"),
    ("dataset.length", lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    ("dataset.noise", lambda v: _is_num(v) and 0 <= v <= 0.5, "a number in [0, 0.5]"),
    ("dataset.max_components", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("dataset.num_train", lambda v: _is_int(v) and v > 1, "an integer > 1"),
    ("dataset.num_test", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("dataset.image_size", lambda v: _is_int(v) and v >= 8, "an integer >= 8"),
    ("dataset.channels", lambda v: v in (1, 3), "1 or 3"),
    ("device.precision", lambda v: str(v) in PRECISIONS, "32, bf16 or 16"),
    ("device.compile", lambda v: isinstance(v, bool), "true or false"),
    ("device.channels_last", lambda v: v in ("auto", True, False), "auto, true or false"),
    ("device.type", lambda v: v in ("auto", "cpu", "cuda", "mps"), "auto, cpu, cuda or mps"),
    ("seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
]


# Keys a data set checks itself because null means something there (dsprites: all of the grid).
OWN_CHECKS = {"dsprites": ("dataset.num_train", "dataset.num_test")}


def validate(cfg: DictConfig) -> None:
    own = OWN_CHECKS.get(OmegaConf.select(cfg, "dataset.name", default=None), ())
    for key, ok, what in CHECKS:
        node = OmegaConf.select(cfg, key, default="__missing__", throw_on_missing=False)
        if (isinstance(node, str) and node == "__missing__") or key in own:
            continue
        value = OmegaConf.to_object(node) if OmegaConf.is_config(node) else node
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            raise UserError(f"{key}={value!r} is invalid: it must be {what}")


def resolve_device(device_cfg) -> tuple[torch.device, torch.dtype | None]:
    """The torch device and autocast dtype (None for fp32) asked for by the ``device`` node."""
    kind = device_cfg.type
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if kind == "auto":
        kind = "cuda" if cuda else "mps" if mps else "cpu"
    elif kind == "cuda" and not cuda:
        raise UserError("device=cuda was asked for but CUDA is not available here "
                        "(torch.cuda.is_available() is False); use device=auto or device=cpu")
    elif kind == "mps" and not mps:
        raise UserError("device=mps was asked for but Apple's MPS backend is not available "
                        "here; use device=auto or device=cpu")
    dtype = PRECISIONS[str(device_cfg.precision)]
    if dtype == torch.float16 and kind == "cpu":
        log.warning("device.precision=16 on the CPU runs, but slowly (no fast fp16 kernels); "
                    "device.precision=bf16 is the faster choice there")
    return torch.device(kind), dtype
