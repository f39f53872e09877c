"""Optimizers and learning-rate schedules: one optimizer per named parameter group (the
``optimizer`` node, with ``optimizer.groups.<name>.*`` on top), each with a schedule that is a
pure function of the optimizer step (so a resumed run continues it exactly)."""

from __future__ import annotations

import math

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vae_train.checks import Rule, integer, is_num, number, one_of
from vae_train.errors import UserError, first_line

# The rules of the optimizer node's keys (any torch optimizer: those it has are checked)
# and of its learning-rate schedule (vae_train.checks).
OPTIMIZER_CHECKS = {
    "lr": number(0, low_open=True),
    "weight_decay": number(0),
    "momentum": number(0, 1, high_open=True),
    "betas": Rule(lambda v: len(v) == 2 and all(is_num(b) and 0 <= b < 1 for b in v),
                  "two numbers in [0, 1)"),
}
SCHEDULE_CHECKS = {
    "name": one_of("constant", "cosine", "step"),
    "warmup_steps": integer(0),
    "min_lr_ratio": number(0, 1),
    "step_epochs": integer(1),
    "gamma": number(0, 1, low_open=True),
}


def lr_factor_fn(sched_cfg, steps_per_epoch: int, total_steps: int):
    """The learning-rate multiplier as a pure function of the optimizer step (resume-safe)."""
    name, warm = sched_cfg["name"], int(sched_cfg["warmup_steps"])
    min_ratio, gamma = float(sched_cfg["min_lr_ratio"]), float(sched_cfg["gamma"])
    step_every = max(1, int(sched_cfg["step_epochs"]) * steps_per_epoch)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if name == "cosine":
            progress = min(1.0, (step - warm) / max(1, total_steps - warm))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if name == "step":
            return gamma ** (step // step_every)
        return 1.0

    return factor


def build_optimizers(cfg, groups: dict) -> tuple[dict, dict]:
    """One optimizer per named parameter group: the ``optimizer`` node with
    ``optimizer.groups.<name>.*`` on top. Returns (optimizers, their ``_target_`` by group);
    an unknown group or a setting the optimizer refuses is one line."""
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    opt_cfg.pop("lr_schedule")
    group_cfgs = opt_cfg.pop("groups", None) or {}
    unknown = sorted(set(group_cfgs) - set(groups))
    if unknown:
        raise UserError(f"optimizer.groups.{unknown[0]}: this model has no parameter group "
                        f"{unknown[0]!r}; its groups are {', '.join(groups)}")
    optimizers, targets = {}, {}
    for name, params in groups.items():
        one = {**opt_cfg, **(group_cfgs.get(name) or {})}
        targets[name] = one["_target_"]
        where = f"optimizer.groups.{name}" if name in group_cfgs else "optimizer"
        try:
            optimizers[name] = instantiate(one)(params)
        except Exception as e:  # noqa: BLE001 - a bad optimizer setting, in one line
            raise UserError(f"{where}={one['_target_']} cannot be built from these "
                            f"settings: {first_line(e)}") from None
    return optimizers, targets


class GroupOptimizers:
    """Every parameter group's optimizer and learning-rate schedule."""

    def __init__(self, cfg, groups: dict, steps_per_epoch: int, total_epochs: int):
        self.params = groups
        self.lr_factor = lr_factor_fn(OmegaConf.to_container(cfg.optimizer.lr_schedule,
                                                             resolve=True),
                                      steps_per_epoch, steps_per_epoch * total_epochs)
        self.optimizers, self.targets = build_optimizers(cfg, groups)
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
                           for name, opt in self.optimizers.items()}

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self.optimizers[name]

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step_schedules(self, phases) -> None:
        """After an optimizer step: the running groups' schedules step; a group resting in
        this stage keeps following the step count."""
        for name, sched in self.schedulers.items():
            if name in phases:
                sched.step()
            else:
                sched.last_epoch += 1

    def wake(self, phases) -> None:
        """Groups that rested (an earlier stage): their learning rate at this step."""
        for name in phases:
            sched, opt = self.schedulers[name], self.optimizers[name]
            for group, base in zip(opt.param_groups, sched.base_lrs):
                group["lr"] = base * self.lr_factor(sched.last_epoch)

    def lr(self, name: str) -> float:
        return self.optimizers[name].param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"optimizer_targets": dict(self.targets),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()}}

    def load_state_dict(self, state: dict, path) -> None:
        """Continue from a checkpoint's optimizers; settings of the current config (an
        ``optimizer.lr=`` given with ``resume=``) win over the saved ones."""
        saved_targets = state.get("optimizer_targets", {})
        if set(saved_targets) != set(self.optimizers):
            raise UserError(f"checkpoint {path} has optimizer groups {sorted(saved_targets)}, "
                            f"this model has {sorted(self.optimizers)}; resume with the same model")
        for name, opt in self.optimizers.items():
            target = self.targets[name]
            if saved_targets[name] != target:
                where = "" if name == "main" else f" (parameter group {name!r})"
                raise UserError(f"checkpoint {path} was trained with {saved_targets[name]}{where}, "
                                f"this config asks for {target}; resume with the same optimizer "
                                "group")
            sched = self.schedulers[name]
            fresh = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            try:
                opt.load_state_dict(state["optimizers"][name])
            except (ValueError, KeyError) as e:
                raise UserError(f"checkpoint {path}: optimizer state does not fit ({e})") from None
            sched.load_state_dict(state["schedulers"][name])
            # The schedule factor is re-derived from the step; the current settings win.
            sched.base_lrs = [f["initial_lr"] for f in fresh]
            for group, f in zip(opt.param_groups, fresh):
                group.update(f)
                group["lr"] = f["initial_lr"] * self.lr_factor(sched.last_epoch)


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together (what clip_grad_norm_ computes)."""
    if hasattr(torch.nn.utils, "get_total_norm"):   # torch >= 2.6: foreach kernels
        return torch.nn.utils.get_total_norm(grads)
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
