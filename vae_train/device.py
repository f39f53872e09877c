"""The ``device`` config node: which device trains (or evaluates) and at what precision."""

from __future__ import annotations

import logging

import torch

from vae_train.checks import BOOLEAN, Rule, one_of
from vae_train.errors import UserError

log = logging.getLogger(__name__)

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}

# The rules of the device node's keys (vae_train.checks).
DEVICE_CHECKS = {
    "type": one_of("auto", "cpu", "cuda", "mps"),
    "precision": Rule(lambda v: str(v) in PRECISIONS, "32, bf16 or 16"),
    "compile": BOOLEAN,
    "channels_last": one_of("auto", True, False, what="auto, true or false"),
}


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
    elif kind not in ("cpu", "cuda", "mps"):
        raise UserError(f"device={kind!r} is not known; use auto, cpu, cuda or mps")
    dtype = PRECISIONS[str(device_cfg.precision)]
    if dtype == torch.float16 and kind == "cpu":
        log.warning("device.precision=16 on the CPU runs, but slowly (no fast fp16 kernels); "
                    "device.precision=bf16 is the faster choice there")
    return torch.device(kind), dtype


def wants_channels_last(cfg_value, model: torch.nn.Module, device: torch.device) -> bool:
    """``device.channels_last``: auto means models with 2-D convolutions on CUDA (tensor cores
    prefer that layout)."""
    convs = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return convs and (cfg_value is True or (cfg_value == "auto" and device.type == "cuda"))
