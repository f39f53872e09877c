"""How much memory a configuration needs, estimated before anything is allocated.

The model is built on PyTorch's ``meta`` device (shapes, no storage), so its parameters are
counted without allocating them, and one training step's forward pass runs on meta tensors
with a hook on every module that adds up the outputs it would keep for the backward pass.
Weights, gradients and the optimizer's state (two more copies for Adam) and one batch of
activations against the memory available on the device: what cannot fit is refused in one
line with the estimate, before a hidden layer of 10^9 units or ``loss.k=10^6`` is allocated
and the kernel kills the process. Where a model cannot run on meta tensors, the activations
are left out of the estimate (the weights still count).

``evaluate`` and ``sample`` bound their largest decode the same way, from a probe of one real
example (:func:`bytes_per_pair`, :func:`check_memory`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from vae_train.errors import UserError
from vae_train.models.base import ExtraMetrics, LatentVariable

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


@contextmanager
def module_outputs(model: torch.nn.Module, seen: Callable[[torch.Tensor], None]):
    """Call ``seen(tensor)`` for every tensor a module of ``model`` returns, inside the block."""
    def hook(_module, _inputs, output):
        for o in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(o, torch.Tensor):
                seen(o)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _activation_bytes(model, objective, x, y) -> int | None:
    total = 0

    def seen(o: torch.Tensor) -> None:
        nonlocal total
        total += o.numel() * o.element_size()

    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        with module_outputs(model, seen):
            objective(model, x, y, step=0, train=True)
    except Exception as e:  # noqa: BLE001 - a model that meta tensors cannot run
        log.debug("activation estimate skipped: %s", e)
        return None
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
    return total


def _cached(path: Path | None):
    """The activation bytes a previous run measured for the same configuration (a file of
    :func:`estimate`'s cache), or _NONE when there is none (or it cannot be read)."""
    if path is None:
        return _NONE
    try:
        value = json.loads(path.read_text())["activation_bytes"]
        return value if value is None or isinstance(value, int) else _NONE
    except (OSError, ValueError, KeyError, TypeError):
        return _NONE


def _store(path: Path | None, act: int | None) -> None:
    """Keep the measured activation bytes for the next run of this configuration; a cache
    folder that cannot be written costs only the speed-up."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"activation_bytes": act}))
        os.replace(tmp, path)
    except OSError as e:
        log.debug("memory estimate not cached: %s", e)


_NONE = object()


def estimate(build_model: Callable[[], torch.nn.Module], objective, x_shape, y_example,
             optimizer: str = "adam", activations: bool = True,
             cache: Path | None = None) -> Estimate | None:
    """The estimate for the model ``build_model()`` makes (called under the meta device) with
    a batch of shape ``x_shape`` and labels like ``y_example`` (a tensor of one batch, or
    None). None if the model cannot be built on meta tensors. ``cache``: a file that keeps
    the activations measured for this configuration, so that a later run of it skips the
    meta forward pass (0.4-0.5 s: PyTorch's meta kernels import sympy)."""
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
    known = _cached(cache) if activations else _NONE
    if known is not _NONE:
        act = known
    elif activations:
        try:
            meta_objective = copy.deepcopy(objective).to("meta")
            x = torch.empty(x_shape, device="meta")
            y = None if y_example is None else torch.empty(
                y_example.shape, dtype=y_example.dtype, device="meta")
            act = _activation_bytes(model, meta_objective, x, y)
        except Exception as e:  # noqa: BLE001
            log.debug("activation estimate skipped: %s", e)
        _store(cache, act)
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


# -- the largest decode of evaluate and sample -------------------------------------------------
# Peak memory per decoded (example, sample) pair over the largest tensor one module returns per
# pair: measured (peak RSS growth at 10^5 pairs, CPU, 1x28x28) 3.1x for the 784-400-20 MLP VAE,
# 3.9x for hvae, 4.5x for conv_vae; the likelihood's elementwise temporaries make the rest.
MEMORY_FACTOR = 6
PROBE_SAMPLES = 4


def largest_row(model, call) -> int:
    """Bytes of the largest row (per example or per pair: a tensor over its first dimension)
    that a module of ``model`` returns while ``call()`` runs; 0 if the probe fails."""
    largest = 0

    def seen(t: torch.Tensor) -> None:
        nonlocal largest
        if t.dim() > 0 and len(t):
            largest = max(largest, t.numel() * t.element_size() // len(t))

    try:
        with module_outputs(model, seen), torch.inference_mode():
            call()
    except Exception:  # noqa: BLE001 - no estimate; the evaluation itself will say what fails
        return 0
    return largest


def bytes_per_pair(model, x: torch.Tensor, y: torch.Tensor | None) -> int:
    """Memory one decoded (example, sample) pair needs, from a probe of one example:
    ``MEMORY_FACTOR`` x the largest of (a module's output per pair, the decoded example and its
    latents in float32)."""
    x1, y1 = x[:1], (None if y is None or not model.conditional else y[:1])
    floor = x1[0].numel() * 4
    if isinstance(model, LatentVariable):
        latents = 0

        def call():
            nonlocal latents
            out = model.infer(x1, y1, k=PROBE_SAMPLES, analytic_kl=False)
            latents = out["kl_dims"].shape[-1] if "kl_dims" in out else 0

        row = largest_row(model, call)
        floor += latents * 4
    elif isinstance(model, ExtraMetrics):
        row = largest_row(model, lambda: model.evaluate_batch(x1, y[:1] if y is not None
                                                              else None))
    else:
        row = 0
    return MEMORY_FACTOR * max(row, floor)


def check_memory(per_pair: int, asked: dict[str, tuple[int, str]], device) -> None:
    """Refuse, in one line with the estimate and what is available, what cannot fit: ``asked``
    maps an option (``max_batch=2048``) to what it puts in memory at once (2048, "(example,
    sample) pairs"); the largest is checked."""
    free = available(torch.device(device))
    option, (most, what) = max(asked.items(), key=lambda kv: kv[1][0])
    need = most * per_pair
    if free is None or need <= free:
        return
    key = option.split("=", 1)[0]
    raise UserError(f"{option} needs about {human(need)} of memory ({most} {what} at once, "
                    f"about {human(per_pair)} each for this model), but {human(free)} is "
                    f"available on {torch.device(device)}; use {key}={max(1, free // per_pair)} "
                    "or less")
