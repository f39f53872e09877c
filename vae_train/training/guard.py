"""The non-finite guard without a host sync per step.

A step whose loss terms or gradient are not finite must never reach the weights. Reading a
flag back from the device every step would guarantee that, but on a GPU it is a
synchronisation per step. Instead the flag stays on the device: the optimizer skips its own
update when it is set (``found_inf``, which torch's fused optimizers accept, as the gradient
scaler uses it), and this guard counts the bad steps and remembers the first one (its step,
phase, what was non-finite and the values of every term), all in device tensors. The host
reads them only at the points where it must know: every ``trainer.nonfinite_check_steps``
steps, at the end of an epoch and before a checkpoint (:meth:`read`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TERMS, GRADIENT = 1, 2   # what was non-finite (a bitmask in the device record)


@dataclass
class BadStep:
    """The first non-finite step the guard saw, read back to the host."""

    step: int            # the optimizer step, 1-based
    epoch: int           # the epoch it belongs to, 1-based
    phase: str
    what: str            # "loss term kl, loss" | "gradient"
    terms: dict          # every term of that phase at that step (host floats)


def optimizer_skips_on_device(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt.step()`` skips its update when ``opt.found_inf`` is set (torch's fused
    Adam, AdamW and SGD; their ``fused`` option must be on in every parameter group)."""
    return bool(getattr(opt, "_step_supports_amp_scaling", False)) and all(
        g.get("fused") for g in opt.param_groups)


class DeviceGuard:
    """Bad steps counted on ``device``; nothing here reads from the device but :meth:`read`."""

    def __init__(self, device: torch.device):
        z = dict(dtype=torch.int64, device=device)
        self.device = device
        self.count = torch.zeros((), **z)        # bad steps seen by this process
        self.amp = torch.zeros((), **z)          # fp16: steps the scaler skipped (gradients)
        self.first = torch.full((4,), -1, **z)   # step, epoch, phase index, what (bitmask)
        self.values: dict[str, torch.Tensor] = {}   # phase -> its terms at the first bad step
        self.names: dict[str, list[str]] = {}       # phase -> its term names
        self.phases: list[str] = []
        self._bad = None                         # this step's flag so far (phases in order)
        self.read_count = 0                      # the count at the last read

    def start_step(self) -> None:
        self._bad = None

    def phase(self, phase: str, names: list[str], values: torch.Tensor, bad_terms: torch.Tensor,
              bad_grad: torch.Tensor | None, step: int, epoch: int) -> torch.Tensor:
        """Record one phase of step ``step`` (0-based) of epoch ``epoch`` (1-based): ``values`` is its stacked terms,
        ``bad_terms``/``bad_grad`` 0-dim bool tensors. Returns the 0-dim float ``found_inf``
        for this phase's optimizer: set when this phase or an earlier one of the step was bad
        (so a later phase does not update on a bad batch)."""
        if phase not in self.names:
            self.names[phase], self.phases = list(names), [*self.phases, phase]
            self.values[phase] = torch.full_like(values, float("nan"))
        what = bad_terms.long() * TERMS
        if bad_grad is not None:
            what = what + bad_grad.long() * GRADIENT
        here = what > 0
        new = here & (self.first[0] < 0)
        packed = torch.stack([torch.full_like(what, step + 1), torch.full_like(what, epoch),
                              torch.full_like(what, self.phases.index(phase)), what])
        self.first = torch.where(new, packed, self.first)
        self.values[phase] = torch.where(new, values, self.values[phase])
        self._bad = here if self._bad is None else self._bad | here
        return self._bad.float()

    def end_step(self) -> torch.Tensor:
        """Count the step; returns its 0-dim bool ``ok`` (no phase was bad)."""
        bad = self._bad
        self.count += bad.long()
        return ~bad

    def read(self) -> tuple[int, int, BadStep | None]:
        """(bad steps, fp16 scaler skips, the first bad step or None): one sync."""
        packed = torch.cat([self.count.reshape(1), self.amp.reshape(1), self.first]).tolist()
        count, amp, (step, epoch, phase_i, what) = int(packed[0]), int(packed[1]), packed[2:]
        self.read_count = count
        if step < 0:
            return count, amp, None
        phase = self.phases[phase_i]
        values = self.values[phase].tolist()
        terms = dict(zip(self.names[phase], values))
        if what & TERMS:
            bad = [k for k, v in terms.items() if not _finite(v)]
            text = f"loss term {', '.join(bad)}"
        else:
            text = "gradient"
        return count, amp, BadStep(step, epoch, phase, text, terms)


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))
