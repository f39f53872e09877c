"""The training loop: steps, AMP, clipping, validation, checkpoints and resume.

The trainer knows no model by name: it asks the objective for a dict of named loss terms
(``loss`` is minimised, every term is logged) and steps the optimizer.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from vae_train import checkpoint, distributed
from vae_train.data import DataModule, Split
from vae_train.errors import NonFiniteError, UserError, first_line
from vae_train.files import atomic_copy
from vae_train.logging import TBLogger
from vae_train.losses import SCHEDULE_TERMS
from vae_train.pictures import figures

log = logging.getLogger(__name__)


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


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together (what clip_grad_norm_ computes)."""
    if hasattr(torch.nn.utils, "get_total_norm"):   # torch >= 2.6: foreach kernels
        return torch.nn.utils.get_total_norm(grads)
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class _Forward(torch.nn.Module):
    """The training forward pass as one module call: ``DistributedDataParallel`` and
    ``torch.compile`` wrap this (a model's ``infer``/``loss_terms`` are not ``forward``)."""

    def __init__(self, model: torch.nn.Module, objective: torch.nn.Module):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, x, y, step: int, phase: str):
        return self.objective(self.model, x, y, step=step, phase=phase)


class _CompiledOrEager:
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


def wants_channels_last(cfg_value, model: torch.nn.Module, device: torch.device) -> bool:
    """``device.channels_last``: auto means conv models on CUDA (tensor cores prefer it)."""
    convs = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return convs and (cfg_value is True or (cfg_value == "auto" and device.type == "cuda"))


class Trainer:
    def __init__(self, cfg, model: torch.nn.Module, objective: torch.nn.Module, data: DataModule,
                 device: torch.device, amp_dtype: torch.dtype | None, run_dir: Path,
                 tb: TBLogger):
        self.cfg, self.t = cfg, cfg.trainer
        self.model, self.objective, self.data = model, objective, data
        self.device, self.amp_dtype = device, amp_dtype
        self.run_dir, self.tb = Path(run_dir), tb
        self.ckpt_dir = self.run_dir / "checkpoints"
        # Data-parallel (torchrun): each optimizer step takes one global batch of
        # world x trainer.batch_size examples, every rank its contiguous share of it.
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.global_batch = int(self.t.batch_size) * self.world
        n = len(data.train)
        for split, size in (("training", n), ("validation", len(data.val)),
                            ("test", len(data.test))):
            if size < self.world:
                raise UserError(f"the {split} split has {size} examples, fewer than the "
                                f"{self.world} processes; use fewer processes or more data")
        self.steps_per_epoch = math.ceil(n / self.global_batch)
        if 0 < n % self.global_batch < self.world:   # a last share would be empty: dropped
            self.steps_per_epoch -= 1

        sched_cfg = OmegaConf.to_container(cfg.optimizer.lr_schedule, resolve=True)
        # Stages run one after the other, each for its epochs (most objectives have one;
        # VQ-VAE's second trains its prior); within a stage, each step runs the stage's
        # phases in order, each updating one named parameter group with its own optimizer
        # (the `optimizer` node, with `optimizer.groups.<name>.*` on top) and schedule.
        self.stages = [(name, int(e), tuple(ph))
                       for name, e, ph in objective.stages(int(self.t.epochs))]
        self.total_epochs = sum(e for _, e, _ in self.stages)
        self.lr_factor = lr_factor_fn(sched_cfg, self.steps_per_epoch,
                                      self.steps_per_epoch * self.total_epochs)
        self.stage, self.phases = self.stages[0][0], self.stages[0][2]
        self.group_params = {name: list(params)
                             for name, params in objective.parameter_groups(model).items()}
        self.optimizers, self.optimizer_targets = build_optimizers(cfg, self.group_params)
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
                           for name, opt in self.optimizers.items()}
        self.optimizer = next(iter(self.optimizers.values()))  # the first (or only) group's
        self.forward = _Forward(model, objective)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # Models whose phases or stages leave some parameters without a gradient in a
            # step (aae, vqvae) need DDP to look for them.
            several = len(self.group_params) > 1 or len(self.stages) > 1
            self.forward = DistributedDataParallel(
                self.forward, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=several)
        if cfg.device.get("compile", False):
            self.forward = _CompiledOrEager(self.forward)
        elif self.world == 1:   # nothing wraps it: skip nn.Module.__call__'s hook machinery
            self.forward = self.forward.forward
        self._agreed_stop = False    # several processes: a signal seen by any rank
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.shuffle_gen = torch.Generator().manual_seed(int(cfg.seed))

        self.epoch = 0
        self.step = 0
        self.best_val = math.inf
        self.best_epoch = 0
        self.history: list[dict] = []
        self.train_time = 0.0
        self.train_images = 0
        self._partial = None         # the rest of an epoch a signal stopped (from a checkpoint)
        self._stepped = False
        self._session = (time.perf_counter(), 0)
        self._stop_signal = None
        self.skipped_steps = 0       # non-finite steps skipped (trainer.nonfinite=skip)
        self.amp_skipped_steps = 0   # fp16: steps the gradient scaler skipped (inf/NaN grads)
        self._epoch_examples = 0
        self.overrides: list[str] = []   # the command line's overrides, for resume=
        # A fixed validation batch for pictures, so grids compare across epochs.
        k = min(int(self.t.num_images), len(data.val))
        self.fig_x = data.val.floats(k)
        self.fig_y = data.val.y[:k]

    # -- one pass ---------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_epoch(self, epoch: int) -> dict:
        self.model.train()
        bs = self.global_batch
        n = len(self.data.train)
        partial, self._partial = self._partial, None
        if partial is not None and partial["epoch"] != epoch:
            partial = None
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        if partial is None:
            perm = torch.randperm(n, generator=self.shuffle_gen).to(self.device)
            first, before, self._epoch_examples = 0, 0.0, 0
        else:   # the rest of an epoch that a signal stopped (see _stop_here)
            perm = partial["perm"].to(self.device)
            first, before = int(partial["batch"]), float(partial["seconds"])
            own = partial["ranks"][self.rank] if "ranks" in partial else partial  # (older)
            self._epoch_examples = int(own["examples"])
            for k, v in own["sums"].items():
                sums[k] = v.to(self.device)
        stage = f" {self.stage}" if len(self.stages) > 1 else ""
        bar = tqdm(total=self.steps_per_epoch, initial=first, leave=False, unit="batch",
                   desc=f"epoch {epoch}/{self.total_epochs}{stage}", dynamic_ncols=True,
                   disable=None if self.t.progress else True)
        start = time.perf_counter()
        self._session = (start, first)   # for the time and images of a session a signal ends
        try:
            self._steps(epoch, perm, first, sums, bar, start - before)
        finally:
            bar.close()  # also on Ctrl-C, so the message after it starts on a clean line
        sums, used = distributed.sum_dict(sums, self._epoch_examples)   # over the ranks
        used = max(1, used)                          # examples of the steps not skipped
        means = {k: (v / used).item() for k, v in sums.items()}  # .item() waits for the device
        now = time.perf_counter()
        seconds = now - start + before
        self.train_time += now - start
        self.train_images += min(n, self.steps_per_epoch * self.global_batch) - first * bs
        means["seconds"] = seconds
        means["images_per_sec"] = n / seconds
        return means

    # -- stopping on a signal -------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt   # a second Ctrl-C: stop now
        self._stop_signal = signal.Signals(signum).name

    def _stopping(self, agree: bool = False) -> bool:
        """Whether a signal asked to stop. Several processes stop at the same step: each
        step's agreement (in ``train_step``) or, with ``agree``, one of its own."""
        if self.world == 1:
            return self._stop_signal is not None
        if agree:
            self._agreed_stop |= distributed.any_true(self._stop_signal is not None)[0]
        return self._agreed_stop

    def _stop_here(self, epoch: int, batch: int, perm, sums, epoch_start: float) -> None:
        """After SIGINT/SIGTERM: save the position in the epoch into checkpoints/last.pt (the
        permutation, the batch, the running sums and every RNG state), so a resume continues
        with the next batch exactly as if nothing had happened; then exit."""
        session_start, session_first = self._session
        self.train_time += time.perf_counter() - session_start
        self.train_images += (batch - session_first) * self.global_batch
        # every rank's running sums (several processes: gathered, each resumes its own)
        ranks = distributed.gather({"sums": {k: v.detach().cpu() for k, v in sums.items()},
                                    "examples": self._epoch_examples})
        state = self.state_dict()
        state["partial_epoch"] = {
            "epoch": epoch, "batch": batch, "perm": perm.cpu(), "world": self.world,
            "ranks": ranks, "seconds": time.perf_counter() - epoch_start}
        self._save(state, "last.pt")
        self._exit_on_signal(f"in epoch {epoch} after batch {batch} of {self.steps_per_epoch}; "
                             "checkpoints/last.pt holds that point")

    def _exit_on_signal(self, where: str) -> None:
        name = self._stop_signal or "SIGTERM"   # (a rank that learnt of it from another)
        if self.rank == 0:
            log.error("stopped by %s %s. Continue with: %s resume=%s", name, where,
                      distributed.command(), self.run_dir)
        raise SystemExit(128 + int(getattr(signal, name)))

    def _save(self, state: dict, name: str) -> None:
        """Write a checkpoint (rank 0 only: one writer per run directory)."""
        if self.rank == 0:
            checkpoint.save_atomic(state, self.ckpt_dir / name)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> dict | None:
        """One optimizer step of every phase on a batch; the terms of all phases, where
        ``loss`` is the first phase's (the run's headline loss). A non-finite loss term or
        gradient stops the run (``trainer.nonfinite=stop``) or skips the step (``skip``: None
        is returned; the step counter and schedules do not move, and the phases before the
        non-finite one keep their update)."""
        clip = self.t.grad_clip
        merged: dict[str, torch.Tensor] = {}
        fp16 = self.scaler.is_enabled()
        self._stepped = False   # whether a phase of this batch has stepped its optimizer
        for name in self.phases:
            with self.autocast():
                terms = self.forward(x, y, self.step, name)
            values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
            bad = not bool(torch.isfinite(values).all())
            if self.world > 1:   # every rank skips or stops together, and stops at one step
                bad, stop = distributed.any_true(bad, self._stop_signal is not None)
                self._agreed_stop |= stop
            if bad:
                bad = [k for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
                return self._nonfinite(name, f"loss term {', '.join(bad) or 'on another rank'}",
                                       terms)
            opt = self.optimizers[name]
            opt.zero_grad(set_to_none=True)
            loss = terms["loss"] if weight == 1.0 else terms["loss"] * weight
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(opt)
            if not fp16:   # fp16: the scaler finds inf/NaN gradients and skips the step itself
                params = self.group_params[name]
                if clip:
                    norm = torch.nn.utils.clip_grad_norm_(params, float(clip))
                else:   # the check alone: the norm, without clip_grad_norm_'s pass that
                    # multiplies every gradient by 1.0 (0.2-0.3 ms of a 3 ms CPU step)
                    norm = _total_norm([p.grad for p in params if p.grad is not None])
                if not bool(torch.isfinite(norm)):
                    return self._nonfinite(name, "gradient", terms)
            elif clip:
                torch.nn.utils.clip_grad_norm_(self.group_params[name], float(clip))
            self.scaler.step(opt)
            self._stepped = True
            merged.update(terms if not merged else {k: v for k, v in terms.items() if k != "loss"})
        if fp16:
            scale = self.scaler.get_scale()
            self.scaler.update()
            if self.scaler.get_scale() < scale:
                self.amp_skipped_steps += 1
        for name, sched in self.schedulers.items():
            if name in self.phases:
                sched.step()
            else:  # a group resting in this stage: its schedule still follows the step
                sched.last_epoch += 1
        self.step += 1
        return merged

    def _nonfinite(self, phase: str, what: str, terms: dict) -> None:
        """Stop with a message naming the step and the term, or skip the step."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        if self.scaler.is_enabled() and self._stepped:
            self.scaler.update()   # an earlier phase stepped: close the scaler's iteration
        values = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in terms.items())
        where = f"step {self.step + 1} (epoch {self.epoch + 1}" + \
            (f", phase {phase})" if len(self.phases) > 1 else ")")
        if self.t.nonfinite == "skip" and self.skipped_steps < int(self.t.max_skipped_steps):
            self.skipped_steps += 1
            if self.skipped_steps in (1, 10, 100) or self.skipped_steps % 1000 == 0:
                log.warning("non-finite %s at %s: step skipped (%d so far; at most "
                            "trainer.max_skipped_steps=%d)", what, where, self.skipped_steps,
                            int(self.t.max_skipped_steps))
            return None
        limit = (f"; {self.skipped_steps} steps were skipped already, "
                 "trainer.max_skipped_steps reached" if self.t.nonfinite == "skip" else "")
        kept = (f"checkpoints keep epoch {self.epoch}" if self.epoch
                else "no checkpoint was written")
        raise NonFiniteError(
            f"non-finite {what} at {where}: {values}{limit}; {kept}. Lower optimizer.lr, set "
            "trainer.grad_clip, or trainer.nonfinite=skip to skip such steps",
            step=self.step + 1, term=what)

    def _steps(self, epoch, perm, first, sums, bar, epoch_start) -> None:
        bs = self.global_batch
        for i in range(first, self.steps_per_epoch):
            if self._stopping():
                self._stop_here(epoch, i, perm, sums, epoch_start)
            idx, weight = perm[i * bs:(i + 1) * bs], 1.0
            if self.world > 1:   # this rank's share; DDP averages the ranks' gradients, so a
                # share of a smaller last batch weighs its loss by its size
                start, stop = distributed.shard(len(idx))
                idx, weight = idx[start:stop], (stop - start) * self.world / len(idx)
            terms = self.train_step(*self.data.train_batch(idx), weight)
            bar.update()
            if terms is None:   # a skipped non-finite step
                continue
            self._epoch_examples += len(idx)
            for k, v in terms.items():
                sums[k] += v.detach().float() * len(idx)
            if self.step % int(self.t.log_every_steps) == 0:
                values = {k: v.item() for k, v in terms.items()}
                self.tb.scalars("train_step", values, self.step)
                bar.set_postfix(loss=f"{values['loss']:.2f}", refresh=False)

    @torch.no_grad()
    def evaluate(self, split: Split) -> dict:
        """The mean of every term over a split (several processes: each its contiguous part,
        then summed over the ranks)."""
        self.model.eval()
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        start, stop = distributed.shard(len(split))
        part = Split(split.x[start:stop], split.y[start:stop]) if self.world > 1 else split
        for x, y in self.data.eval_batches(part, int(self.t.eval_batch_size)):
            with self.autocast():
                terms = self.objective(self.model, x, y, step=self.step, train=False)
            for k, v in terms.items():
                sums[k] += v.detach().float() * len(x)
        sums, _ = distributed.sum_dict(sums, 0)
        return {k: (v / len(split)).item() for k, v in sums.items()}

    # -- the loop ---------------------------------------------------------------------------
    def stage_index(self, epoch: int) -> int:
        """Which stage epoch ``epoch`` (1-based) belongs to (the last one past the end)."""
        end = 0
        for i, (_, e, _) in enumerate(self.stages):
            end += e
            if epoch <= end:
                return i
        return len(self.stages) - 1

    def enter_stage(self, epoch: int, starting: bool = True) -> None:
        """Set the stage of ``epoch``. When ``starting`` the stage's first epoch (not one
        already begun before a signal stopped it) starts from the previous stage's best
        weights, and the best validation loss is tracked afresh (losses of different stages
        measure different things)."""
        i = self.stage_index(max(epoch, 1))
        self.stage, self.phases = self.stages[i][0], self.stages[i][2]
        self.objective.set_stage(self.stage)
        for name in self.phases:  # a group that rested: its learning rate at this step
            sched, opt = self.schedulers[name], self.optimizers[name]
            for group, base in zip(opt.param_groups, sched.base_lrs):
                group["lr"] = base * self.lr_factor(sched.last_epoch)
        first = sum(e for _, e, _ in self.stages[:i]) + 1
        resumed_inside = self._partial is not None and self._partial["epoch"] == epoch
        if i > 0 and epoch == first and starting and not resumed_inside:
            log.info("stage %r: epochs %d-%d, starting from the best weights of stage %r "
                     "(epoch %d)", self.stage, first, first + self.stages[i][1] - 1,
                     self.stages[i - 1][0], self.best_epoch)
            self.load_best()
            self.best_val, self.best_epoch = math.inf, 0

    def fit(self) -> None:
        epochs = self.total_epochs
        if self.epoch >= epochs and epochs > 0:
            log.info("already trained for %d epochs (trainer.epochs=%d); raise trainer.epochs "
                     "to train longer", self.epoch, epochs)
        # SIGINT (Ctrl-C) and SIGTERM (a scheduler's stop) end the current step, save the
        # position and exit; a second Ctrl-C stops at once.
        self._stop_signal = None
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:   # not the main thread (a launcher's worker): default handling
                pass
        try:
            for epoch in range(self.epoch + 1, epochs + 1):
                self.enter_stage(epoch)
                self._one_epoch(epoch)
                if self._stopping(agree=True) and epoch < epochs:
                    self._exit_on_signal(f"after epoch {epoch}; checkpoints/last.pt holds it")
            self.enter_stage(self.epoch, starting=False)
        except KeyboardInterrupt:
            if self.epoch == 0 and not (self.ckpt_dir / "last.pt").is_file():
                log.error("interrupted in epoch 1, before the first checkpoint; start the run "
                          "again to train it")
            else:
                log.error("interrupted in epoch %d; checkpoints/last.pt holds epoch %d. Continue "
                          "with: %s resume=%s", self.epoch + 1, self.epoch,
                          distributed.command(), self.run_dir)
            raise SystemExit(130) from None
        finally:
            for sig, handler in previous.items():
                if handler is not None:   # None: installed from C, cannot be put back
                    signal.signal(sig, handler)

    def _one_epoch(self, epoch: int) -> None:
        start = time.perf_counter()
        train = self.train_epoch(epoch)
        if not math.isfinite(train.get("loss", math.nan)):   # (no loss: every step skipped)
            kept = (f"checkpoints keep epoch {self.epoch}" if self.epoch
                    else "no checkpoint was written")
            raise NonFiniteError(
                f"training diverged: the mean train loss of epoch {epoch} is "
                f"{train.get('loss', 'undefined (every step skipped)')} "
                f"(recon {train.get('recon')}, kl {train.get('kl')}); {kept}. "
                "Lower optimizer.lr or set trainer.grad_clip", step=self.step, term="loss")
        val = self.evaluate(self.data.val)
        improved = val["loss"] < self.best_val
        if improved:
            self.best_val, self.best_epoch = val["loss"], epoch
        lr = self.optimizers[self.phases[0]].param_groups[0]["lr"]
        self.history.append({"epoch": epoch, "step": self.step, "lr": lr,
                             "skipped_steps": self.skipped_steps,
                             "amp_skipped_steps": self.amp_skipped_steps,
                             **{f"train_{k}": v for k, v in train.items()},
                             **{f"val_{k}": v for k, v in val.items()}})
        self.tb.scalars("train", {k: v for k, v in train.items() if k != "seconds"}, self.step)
        self.tb.scalars("val", val, self.step)
        self.tb.scalars("opt", {"lr": lr, "epoch": epoch}, self.step)
        every = int(self.t.image_every_epochs)
        if every and epoch % every == 0 and self.rank == 0:
            self.tb.images(figures(self.model, self.fig_x, self.fig_y, len(self.fig_x)), self.step)
        self.epoch = epoch
        self.history[-1]["epoch_seconds"] = time.perf_counter() - start  # train + val + pictures
        self._save(self.state_dict(), "last.pt")
        if improved and self.rank == 0:  # the same bytes: copy rather than serialise again
            atomic_copy(self.ckpt_dir / "last.pt", self.ckpt_dir / "best.pt")
        shown = [(k, v) for k, v in val.items() if k != "loss" and k not in SCHEDULE_TERMS]
        detail = ", ".join(f"{k} {v:.2f}" if abs(v) >= 1 else f"{k} {v:.3f}"
                           for k, v in shown[:4])
        log.info("epoch %d/%d  train %.2f  val %.2f (%s)  %.0f img/s  %.1fs%s",
                 epoch, self.total_epochs, train["loss"], val["loss"], detail,
                 train["images_per_sec"], train["seconds"], "  best" if improved else "")

    # -- checkpoints ------------------------------------------------------------------------
    def _rng_state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "shuffle": self.shuffle_gen.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return rng

    def _set_rng_state(self, rng: dict) -> None:
        torch.set_rng_state(rng["torch"])
        self.shuffle_gen.set_state(rng["shuffle"])
        if "cuda" in rng and torch.cuda.is_available():
            if len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def state_dict(self) -> dict:
        """The checkpoint. Several processes: every rank must call it (their random states
        are gathered; rank 0 writes them all)."""
        rng = self._rng_state()
        if self.world > 1:
            rng["ranks"] = distributed.gather(rng)
        return {
            "format": checkpoint.FORMAT,
            "model_target": self.cfg.model._target_,
            "optimizer_targets": dict(self.optimizer_targets),
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_val_loss": self.best_val,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "train_time": self.train_time,
            "train_images": self.train_images,
            "skipped_steps": self.skipped_steps,
            "amp_skipped_steps": self.amp_skipped_steps,
            "rng": rng,
            "world_size": self.world,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "overrides": list(self.overrides),
        }

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint; optimizer settings of the current config apply on top."""
        state = checkpoint.load(path)
        checkpoint.load_model_state(self.model, state, path)
        self.objective.load_state_dict(state.get("objective", {}))
        old_data = state.get("config", {}).get("dataset")
        new_data = OmegaConf.to_container(self.cfg.dataset, resolve=True)
        if old_data is not None and old_data != new_data:
            changed = sorted(k for k in set(old_data) | set(new_data)
                             if old_data.get(k) != new_data.get(k))
            log.warning("resuming with other data settings than the checkpoint's (dataset.%s); "
                        "best_val_loss was measured on the old validation split",
                        ", dataset.".join(changed))
        saved_targets = state.get("optimizer_targets", {})
        if set(saved_targets) != set(self.optimizers):
            raise UserError(f"checkpoint {path} has optimizer groups {sorted(saved_targets)}, "
                            f"this model has {sorted(self.optimizers)}; resume with the same model")
        for name, opt in self.optimizers.items():
            self._restore_group(path, name, opt, self.schedulers[name], saved_targets[name],
                                state["optimizers"][name], state["schedulers"][name])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_val, self.best_epoch = float(state["best_val_loss"]), int(state["best_epoch"])
        self.history = list(state["history"])
        self.train_time, self.train_images = float(state["train_time"]), int(state["train_images"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self._partial = state.get("partial_epoch")
        self.amp_skipped_steps = int(state.get("amp_skipped_steps", 0))
        saved_world = int(state.get("world_size", 1))
        ranks = state["rng"].get("ranks") or [state["rng"]]
        if saved_world == self.world:
            self._set_rng_state(ranks[self.rank])
        else:   # another number of processes: the same data order, fresh noise per rank
            self._set_rng_state(state["rng"])
            if self.rank:
                distributed.seed_rank(int(self.cfg.seed) + self.epoch)
            log.warning("resuming with %d process(es), the checkpoint was written by %d: the "
                        "run continues, but not bit for bit as with %d", self.world,
                        saved_world, saved_world)
            if self._partial is not None:
                log.warning("the epoch that a signal stopped restarts from its beginning "
                            "(its position is counted in batches of %d processes)", saved_world)
                self._partial = None
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    def _restore_group(self, path, name, opt, sched, saved_target, opt_state, sched_state):
        target = self.optimizer_targets[name]
        if saved_target != target:
            where = "" if name == "main" else f" (parameter group {name!r})"
            raise UserError(f"checkpoint {path} was trained with {saved_target}{where}, this "
                            f"config asks for {target}; resume with the same optimizer group")
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        try:
            opt.load_state_dict(opt_state)
        except (ValueError, KeyError) as e:
            raise UserError(f"checkpoint {path}: optimizer state does not fit ({e})") from None
        sched.load_state_dict(sched_state)
        # Overrides given with resume= (optimizer.lr=..., weight decay, ...) win over the
        # saved hyperparameters; the schedule factor is re-derived from the step.
        sched.base_lrs = [f["initial_lr"] for f in fresh]
        for group, f in zip(opt.param_groups, fresh):
            group.update(f)
            group["lr"] = f["initial_lr"] * self.lr_factor(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in opt.param_groups]

    def load_best(self) -> int:
        """Put the best checkpoint's weights in the model; returns its epoch (0: untrained)."""
        distributed.barrier()   # several processes: rank 0 has finished writing it
        best = self.ckpt_dir / "best.pt"
        if not best.is_file():
            return self.epoch
        state = checkpoint.load(best)
        checkpoint.load_model_state(self.model, state, best)
        return int(state["epoch"])
