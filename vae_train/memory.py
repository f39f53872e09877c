"""How much memory a configuration needs, estimated before anything is allocated.

The model is built on PyTorch's ``meta`` device (shapes, no storage), so its parameters are
counted without allocating them, and one training step's forward pass runs on meta tensors
with a hook on every module that adds up the outputs it would keep for the backward pass.
Weights, gradients and the optimizer's state (two more copies for Adam) and one batch of
activations against the memory available on the device: what cannot fit is refused in one
line with the estimate, before a hidden layer of 10^9 units or ``loss.k=10^6`` is allocated
and the kernel kills the process. Where a model cannot run on meta tensors, the activations
are left out of the estimate (the weights still count).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vae_train.errors import UserError

log = logging.getLogger(__name__)

# Copies of the weights an optimizer step keeps (weights, gradients, Adam's two moments).
COPIES = {"adam": 4, "adamw": 4, "sgd": 3, "rmsprop": 3}


def human(n: float) -> str:
    for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**10:.0f} KB"


@dataclass
class Estimate:
    params: int           # number of parameters
    state_bytes: int      # weights, gradients and optimizer state
    activation_bytes: int | None   # one training batch's forward pass (None: not measured)

    @property
    def total(self) -> int:
        return self.state_bytes + (self.activation_bytes or 0)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux: MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # optional, elsewhere
        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - unknown: assume it fits
        return None


def available(device: torch.device) -> int | None:
    """Bytes free for new allocations on ``device`` (None: unknown)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:
            return None
    if device.type == "cpu":
        return available_memory()
    return None


def _activation_bytes(model, objective, x, y) -> int | None:
    total = 0

    def hook(_module, _inputs, output):
        nonlocal total
        outs = output if isinstance(output, (tuple, list)) else [output]
        for o in outs:
            if isinstance(o, torch.Tensor):
                total += o.numel() * o.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        objective(model, x, y, step=0, train=True)
    except Exception as e:  # noqa: BLE001 - a model that meta tensors cannot run
        log.debug("activation estimate skipped: %s", e)
        return None
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
        for h in handles:
            h.remove()
    return total


def estimate(build_model: Callable[[], torch.nn.Module], objective, x_shape, y_example,
             optimizer: str = "adam", activations: bool = True) -> Estimate | None:
    """The estimate for the model ``build_model()`` makes (called under the meta device) with
    a batch of shape ``x_shape`` and labels like ``y_example`` (a tensor of one batch, or
    None). None if the model cannot be built on meta tensors."""
    try:
        with torch.device("meta"):
            # (.to: what the constructor was handed, built outside, goes to meta too)
            model = build_model().to("meta")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a model whose constructor needs real tensors
        log.debug("memory estimate skipped: %s", e)
        return None
    params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    copies = COPIES.get(optimizer.lower(), 4) if activations else 1
    act = None
    if activations:
        try:
            meta_objective = copy.deepcopy(objective).to("meta")
            x = torch.empty(x_shape, device="meta")
            y = None if y_example is None else torch.empty(
                y_example.shape, dtype=y_example.dtype, device="meta")
            act = _activation_bytes(model, meta_objective, x, y)
        except Exception as e:  # noqa: BLE001
            log.debug("activation estimate skipped: %s", e)
    return Estimate(params, weights * copies, act)


def check_fits(est: Estimate | None, device: torch.device, batch: int, hint: str) -> None:
    """Refuse (one line with the estimate and what is available) what cannot fit."""
    if est is None:
        return
    free = available(device)
    if free is None or est.total <= free:
        return
    parts = f"{est.params:.3g} parameters: {human(est.state_bytes)}"
    if est.activation_bytes is not None:
        parts += f"; one batch of {batch}: {human(est.activation_bytes)}"
    raise UserError(f"this configuration needs about {human(est.total)} of memory ({parts}), "
                    f"but {human(free)} is available on {device}; {hint}")
