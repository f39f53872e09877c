"""The training forward pass (model and objective) as one callable, and what wraps it:
``DistributedDataParallel`` over several processes and ``torch.compile`` (``device.compile``),
which falls back to eager with one warning where it cannot compile."""

from __future__ import annotations

import logging

import torch

from vae_train.errors import first_line

log = logging.getLogger(__name__)


class TrainingForward(torch.nn.Module):
    """The training forward pass as one module call: ``DistributedDataParallel`` and
    ``torch.compile`` wrap this (a model's ``infer``/``loss_terms`` are not ``forward``)."""

    def __init__(self, model: torch.nn.Module, objective: torch.nn.Module):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, x, y, step: int, phase: str):
        return self.objective(self.model, x, y, step=step, phase=phase)


class CompiledOrEager:
    """``torch.compile`` of the training forward pass; where it cannot compile (no C++
    compiler, an unsupported platform or operation) one warning, then the eager module."""

    def __init__(self, module: torch.nn.Module):
        self.eager, self.compiled = module, None
        try:
            self.compiled = torch.compile(module)
        except Exception as e:  # noqa: BLE001 - torch.compile unsupported on this platform
            self._fall_back(e)

    def _fall_back(self, e: BaseException) -> None:
        self.compiled = None
        what, name = first_line(e), f"{type(e.__cause__ or e).__name__}: "
        while what.startswith(name + name):   # (Inductor repeats its name in its messages)
            what = what[len(name):]
        log.warning("device.compile=true: torch.compile cannot compile this model here (%s); "
                    "training goes on without it", what)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as e:  # noqa: BLE001 - a compiler failure, not the model's
                self._fall_back(e)   # (a real error in the model is raised again below)
        return self.eager(*args)


def training_forward(model, objective, device: torch.device, world: int,
                     find_unused: bool, compile_: bool):
    """``f(x, y, step, phase) -> terms``: DDP-wrapped with several processes (models whose
    phases or stages leave some parameters without a gradient need ``find_unused``),
    compiled with ``compile_``; alone, the bare method (no nn.Module call machinery)."""
    forward = TrainingForward(model, objective)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused)
    if compile_:
        return CompiledOrEager(forward)
    return forward.forward if world == 1 else forward
