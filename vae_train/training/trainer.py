"""The training loop: fit (stages and epochs), one epoch of steps, one optimizer step of every
phase, and an evaluation pass over a split.

The trainer knows no model by name: it asks the objective for a dict of named loss terms
(``loss`` is minimised, every term is logged) and steps one optimizer per parameter group.
What happens around the loop lives beside it: ``optim`` (optimizers and schedules), ``state``
(checkpoints and resume), ``stopping`` (signals, the non-finite policy, agreement across
ranks), ``reporting`` (history, TensorBoard, pictures, metrics.json) and ``forward`` (DDP and
torch.compile around the training forward pass).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch

from vae_train import distributed
from vae_train.callbacks import build_callbacks, hooks
from vae_train.checks import BOOLEAN, integer, number, one_of, optional
from vae_train.data import DataModule, Split
from vae_train.errors import NonFiniteError, UserError, first_line, traceback_to_files
from vae_train.logging import Loggers, TBLogger
from vae_train.models.base import set_stage, training_plan
from vae_train.training import state
from vae_train.training.forward import training_forward
from vae_train.training.guard import DeviceGuard, optimizer_skips_on_device
from vae_train.training.optim import GroupOptimizers, total_norm
from vae_train.training.profiling import StepProfiler
from vae_train.training.reporting import Reporter, speed_unit
from vae_train.training.stopping import Stopping

log = logging.getLogger(__name__)

# The rules of the trainer node's keys (vae_train.checks).
TRAINER_CHECKS = {
    "epochs": integer(0), "batch_size": integer(1), "eval_batch_size": integer(1),
    "grad_clip": optional(number(0, low_open=True)), "log_every_steps": integer(1),
    "num_images": integer(1), "image_every_epochs": integer(0), "progress": BOOLEAN,
    "nonfinite": one_of("stop", "skip"), "max_skipped_steps": integer(0),
    "nonfinite_check": one_of("auto", "every_step"), "nonfinite_check_steps": integer(1),
    "limit_train_batches": optional(integer(1)), "limit_eval_batches": optional(integer(1)),
    "overfit_batches": integer(0), "profile_steps": integer(0), "detect_anomaly": BOOLEAN,
    "pictures": BOOLEAN,
}


class Trainer:
    def __init__(self, cfg, model: torch.nn.Module, objective: torch.nn.Module, data: DataModule,
                 device: torch.device, amp_dtype: torch.dtype | None, run_dir: Path,
                 tb: Loggers | TBLogger):
        self.cfg, self.t = cfg, cfg.trainer
        self.model, self.objective, self.data = model, objective, data
        self.device, self.amp_dtype = device, amp_dtype
        self.run_dir, self.ckpt_dir = Path(run_dir), Path(run_dir) / "checkpoints"
        # Data-parallel (torchrun): each optimizer step takes one global batch of
        # world x trainer.batch_size examples, every rank its contiguous share of it.
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.global_batch = int(self.t.batch_size) * self.world
        distributed.check_split_sizes(training=len(data.train), validation=len(data.val),
                                      test=len(data.test))
        self.overfit = int(self.t.get("overfit_batches") or 0)
        if self.overfit:   # debug=overfit: the same few batches every epoch, validated on them
            data.train = data.train.part(0, self.overfit * self.global_batch)
            data.val = data.train
        self.steps_per_epoch = distributed.steps_per_epoch(len(data.train), self.global_batch)
        if self.t.get("limit_train_batches"):   # debug=fast
            self.steps_per_epoch = min(self.steps_per_epoch, int(self.t.limit_train_batches))
        # Stages run one after the other; each step of a stage runs its phases in order,
        # each updating one parameter group with its own optimizer and schedule.
        self.stages, groups = training_plan(model, objective, int(self.t.epochs))
        self.total_epochs = sum(s.epochs for s in self.stages)
        self.stage, self.phases = self.stages[0].name, self.stages[0].phases
        self.optim = GroupOptimizers(cfg, groups, self.steps_per_epoch, self.total_epochs)
        self.forward = training_forward(model, objective, device, self.world,
                                        len(groups) > 1 or len(self.stages) > 1,
                                        bool(cfg.device.get("compile", False)))
        self.stopping = Stopping(self.world, self.t.nonfinite, self.t.max_skipped_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.shuffle_gen = torch.Generator().manual_seed(int(cfg.seed))
        self.epoch = self.step = self.best_epoch = 0
        self.best_val = math.inf
        self.history: list[dict] = []
        self.train_time, self.train_images = 0.0, 0
        self.skipped_steps = 0       # non-finite steps skipped (trainer.nonfinite=skip)
        self.amp_skipped_steps = 0   # fp16: steps the gradient scaler skipped (inf/NaN grads)
        self.partial = None          # the rest of an epoch a signal stopped (from a checkpoint)
        self.epoch_examples = 0
        self.overrides: list[str] = []   # the command line's overrides, for resume=
        self.watch_dir = self.run_dir.is_dir()   # deleted under the run (a sweep's folder)?
        # The non-finite guard: on the device (no sync per step) where every optimizer can
        # skip its own update (training.guard), else a check read back every step.
        self.guard = DeviceGuard(device)
        self.callbacks = build_callbacks(cfg.get("callbacks"))
        self.step_hooks = hooks(self.callbacks, "on_step_end")
        self.stopped_early: dict | None = None   # {"epoch", "reason", "callback"}
        self.before_first_save = None   # called once before this process's first checkpoint
        k = min(int(self.t.num_images), len(data.val))   # a fixed batch: grids compare
        self.report = Reporter(tb, self.t, self.rank, data.val.floats(k), data.val.y[:k],
                               int(cfg.seed))
        self.choose_guard()

    def choose_guard(self) -> None:
        """The device guard where this process can use it: one process, and every optimizer
        skipping its own update on the device (fused); else every step is checked."""
        self.skipped_before, self.amp_before = self.skipped_steps, self.amp_skipped_steps
        self.device_guard = (self.world == 1 and self.t.nonfinite_check == "auto" and all(
            optimizer_skips_on_device(o) for o in self.optim.optimizers.values()))

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint (see :func:`vae_train.training.state.restore`)."""
        state.restore(self, path)
        self.choose_guard()

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- the loop ---------------------------------------------------------------------------
    def call_hooks(self, name: str, *args) -> None:
        """Every callback's ``name`` hook. An exception in one (a callback of your own) is one
        line naming the callback and the hook; its traceback goes to the run's train.log."""
        for hook in hooks(self.callbacks, name):
            try:
                hook(self, *args)
            except (UserError, KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - the callback's own code
                cb = getattr(hook, "__self__", None)
                where = f"callbacks.{getattr(cb, 'name', '') or type(cb).__name__}.{name}"
                traceback_to_files(where)
                raise UserError(f"{where} failed: {first_line(e)} (an "
                                "error in the callback's code; its traceback is in the run's "
                                "train.log)") from None

    def agree_stop(self) -> None:
        """Several processes: a stop one rank's callback asked for is every rank's (each
        runs the same epochs), the first rank's reason."""
        if self.world > 1:
            asked = [s for s in distributed.gather(self.stopped_early) if s]
            self.stopped_early = asked[0] if asked else None

    def request_stop(self, reason: str, by: str = "") -> None:
        """Stop after this epoch (a callback: early stopping). The epoch's checkpoint, the
        run's ``metrics.json`` and a later resume know it."""
        self.stopped_early = {"epoch": self.epoch, "reason": reason, "callback": by}

    def fit(self) -> None:
        epochs = self.total_epochs
        before, self.stopped_early = self.stopped_early, None
        self.call_hooks("on_fit_start")
        self.agree_stop()
        if self.stopped_early and not self.epoch:
            log.info("callbacks.%s asked to stop before the first epoch (%s); nothing was "
                     "trained", self.stopped_early["callback"], self.stopped_early["reason"])
            epochs = 0
        elif self.stopped_early:
            log.info("the run stopped early at epoch %d (%s); nothing more to train. To go on, "
                     "resume with the callback's setting changed or the callback off",
                     self.stopped_early["epoch"], self.stopped_early["reason"])
            epochs = self.epoch
        elif before:
            log.info("the run had stopped early at epoch %d (%s); training goes on",
                     before["epoch"], before["reason"])
        if self.epoch >= epochs and epochs > 0 and not self.stopped_early:
            log.info("already trained for %d epochs (trainer.epochs=%d); raise trainer.epochs "
                     "to train longer", self.epoch, epochs)
        profiler = None
        if int(self.t.get("profile_steps") or 0) and self.rank == 0:
            profiler = StepProfiler(self.run_dir, int(self.t.profile_steps), self.device)
            self.step_hooks = [*self.step_hooks, profiler]
        anomaly = (torch.autograd.detect_anomaly(check_nan=True)
                   if self.t.get("detect_anomaly") else nullcontext())
        try:
            with self.stopping.signals(), anomaly:
                for epoch in range(self.epoch + 1, epochs + 1):
                    self.enter_stage(epoch)
                    self.run_epoch(epoch)
                    if self.stopped_early:
                        log.info("stopped early after epoch %d by callbacks.%s: %s",
                                 epoch, self.stopped_early["callback"],
                                 self.stopped_early["reason"])
                        break
                    if self.stopping.requested(agree=True) and epoch < epochs:
                        self.stopping.exit(f"after epoch {epoch}; checkpoints/last.pt holds it",
                                           self.rank, self.run_dir)
                self.enter_stage(self.epoch, starting=False)
            self.call_hooks("on_fit_end")
        except RuntimeError as e:   # detect_anomaly: the backward function that made a NaN
            if not self.t.get("detect_anomaly") or "returned nan" not in str(e):
                raise
            kept = (f"checkpoints keep epoch {self.epoch}" if self.epoch
                    else "no checkpoint was written")
            raise NonFiniteError(f"autograd anomaly detection at step {self.step + 1} (epoch "
                                 f"{self.epoch + 1}): {first_line(e)} (the forward call that "
                                 f"made it is in the warning above); {kept}",
                                 step=self.step + 1, term="gradient") from None
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
            if profiler is not None:
                profiler.close()
                self.step_hooks = [h for h in self.step_hooks if h is not profiler]

    def stage_index(self, epoch: int) -> int:
        """Which stage epoch ``epoch`` (1-based) belongs to (the last one past the end)."""
        end = 0
        for i, s in enumerate(self.stages):
            end += s.epochs
            if epoch <= end:
                return i
        return len(self.stages) - 1

    def enter_stage(self, epoch: int, starting: bool = True) -> None:
        """Set the stage of ``epoch``. When ``starting`` the stage's first epoch (not one
        already begun before a signal stopped it) starts from the previous stage's best
        weights, and the best validation loss is tracked afresh (losses of different stages
        measure different things)."""
        i = self.stage_index(max(epoch, 1))
        self.stage, self.phases = self.stages[i].name, self.stages[i].phases
        set_stage(self.model, self.stage)
        self.optim.wake(self.phases)
        first = sum(s.epochs for s in self.stages[:i]) + 1
        resumed_inside = self.partial is not None and self.partial["epoch"] == epoch
        if i > 0 and epoch == first and starting and not resumed_inside:
            log.info("stage %r: epochs %d-%d, starting from the best weights of stage %r "
                     "(epoch %d)", self.stage, first, first + self.stages[i].epochs - 1,
                     self.stages[i - 1].name, self.best_epoch)
            state.load_best(self)
            self.best_val, self.best_epoch = math.inf, 0

    def run_epoch(self, epoch: int) -> None:
        """Train one epoch, validate, record, save ``last.pt`` (and ``best.pt``)."""
        start = time.perf_counter()
        train = self.train_epoch(epoch)
        if self.rank == 0 and self.watch_dir and not self.run_dir.is_dir():
            raise UserError(f"the run directory {self.run_dir} was deleted while epoch {epoch} "
                            "trained; the run stops (nothing is written)")
        if not math.isfinite(train.get("loss", math.nan)):   # (no loss: every step skipped)
            raise Stopping.diverged(epoch, self.epoch, self.step, train)
        val = self.evaluate(self.data.val)
        improved = val["loss"] < self.best_val
        if improved:
            self.best_val, self.best_epoch = val["loss"], epoch
        lr = self.optim.lr(self.phases[0])
        self.history.append(Reporter.history_record(epoch, self.step, lr, self.skipped_steps,
                                                    self.amp_skipped_steps, train, val))
        self.report.epoch_end(self.model, epoch, self.step, lr, train, val)
        self.epoch = epoch
        self.history[-1]["epoch_seconds"] = time.perf_counter() - start  # train + val + pictures
        self.call_hooks("on_epoch_end", self.history[-1])
        self.agree_stop()
        if self.stopped_early:
            self.history[-1]["stopped_early"] = self.stopped_early["reason"]
        self.report.epoch_record(self.history[-1], self.step)   # the loggers' row (csv)
        if self.before_first_save is not None:
            self.before_first_save, first_save = None, self.before_first_save
            first_save()
        # best.pt: the same bytes as last.pt, copied rather than serialised again
        state.save(self, state.state_dict(self), "last.pt", "best.pt" if improved else None)
        self.call_hooks("on_checkpoint", self.ckpt_dir / "last.pt")
        Reporter.epoch_line(epoch, self.total_epochs, train, val, improved,
                            speed_unit(self.data.shape))

    def train_epoch(self, epoch: int) -> dict:
        """The epoch's steps (the rest of one a signal stopped); the mean of every term."""
        self.model.train()
        n = len(self.data.train)
        partial, self.partial = self.partial, None
        if partial is not None and partial["epoch"] != epoch:
            partial = None
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        if partial is None:
            perm = (torch.arange(n) if self.overfit
                    else torch.randperm(n, generator=self.shuffle_gen)).to(self.device)
            first, before, self.epoch_examples = 0, 0.0, 0
        else:   # the rest of an epoch that a signal stopped
            perm = partial["perm"].to(self.device)
            first, before = int(partial["batch"]), float(partial["seconds"])
            own = partial["ranks"][self.rank] if "ranks" in partial else partial  # (older)
            self.epoch_examples = int(own["examples"])
            for k, v in own["sums"].items():
                sums[k] = v.to(self.device)
        from tqdm.auto import tqdm   # (here: 50-60 ms off every command's start)

        stage = f" {self.stage}" if len(self.stages) > 1 else ""
        bar = tqdm(total=self.steps_per_epoch, initial=first, leave=False, unit="batch",
                   desc=f"epoch {epoch}/{self.total_epochs}{stage}", dynamic_ncols=True,
                   disable=None if self.t.progress else True)
        start = time.perf_counter()
        try:
            self._steps(epoch, perm, first, sums, bar, start, before)
        finally:
            bar.close()  # also on Ctrl-C, so the message after it starts on a clean line
        self.check_guard()   # the end of an epoch: the host learns of skipped steps
        self.epoch_examples = int(self.epoch_examples)
        sums, used = distributed.sum_dict(sums, self.epoch_examples)   # over the ranks
        # examples of the steps not skipped (none: no mean, and the epoch diverged)
        means = {k: (v / used).item() for k, v in sums.items()} if used else {}
        now = time.perf_counter()
        seconds = now - start + before
        self.train_time += now - start
        used_n = min(n, self.steps_per_epoch * self.global_batch)   # (debug: fewer batches)
        self.train_images += used_n - first * self.global_batch
        means["seconds"] = seconds
        means["images_per_sec"] = used_n / seconds
        return means

    def _steps(self, epoch, perm, first, sums, bar, start: float, before: float) -> None:
        bs = self.global_batch
        shares, weights = [], []
        for i in range(first, self.steps_per_epoch):
            idx, weight = perm[i * bs:(i + 1) * bs], 1.0
            if self.world > 1:   # this rank's share; DDP averages the ranks' gradients, so a
                # share of a smaller last batch weighs its loss by its size
                a, b = distributed.shard(len(idx))
                idx, weight = idx[a:b], (b - a) * self.world / len(idx)
            shares.append(idx)
            weights.append(weight)
        batches = self.data.train_batches(shares)   # read ahead when the data are in a file
        check_every = int(self.t.nonfinite_check_steps)
        try:
            for i, weight, (x, y) in zip(range(first, self.steps_per_epoch), weights, batches):
                if self.stopping.requested():   # a signal: save the position in the epoch
                    self.check_guard()
                    self.epoch_examples = int(self.epoch_examples)
                    now = time.perf_counter()
                    self.train_time += now - start
                    self.train_images += (i - first) * bs
                    state.save_partial(self, epoch, i, perm, sums, now - start + before)
                    self.stopping.exit(f"in epoch {epoch} after batch {i} of "
                                       f"{self.steps_per_epoch}; checkpoints/last.pt holds that "
                                       "point", self.rank, self.run_dir)
                terms = self.train_step(x, y, weight)
                bar.update()
                for hook in self.step_hooks:
                    hook(self)
                if terms is None:   # a skipped non-finite step (checked every step)
                    continue
                if self.device_guard:   # a bad step (not known here) adds nothing
                    ok = self.guard.end_step()
                    self.epoch_examples = self.epoch_examples + ok.long() * len(x)
                    for k, v in terms.items():
                        sums[k] += torch.where(ok, v.detach().float(), 0.0) * len(x)
                    if self.step % check_every == 0:
                        self.check_guard()
                else:
                    self.epoch_examples += len(x)
                    for k, v in terms.items():
                        sums[k] += v.detach().float() * len(x)
                if self.step % int(self.t.log_every_steps) == 0:
                    values = {k: v.item() for k, v in terms.items()}
                    if all(map(math.isfinite, values.values())):
                        self.report.tb.scalars("train_step", values, self.step)
                        bar.set_postfix(loss=f"{values['loss']:.2f}", refresh=False)
        finally:
            batches.close()   # stops a background reader

    def check_guard(self) -> None:
        """Read the device guard (one sync): the run's skipped steps, and a stop
        (``trainer.nonfinite=stop``, or past ``trainer.max_skipped_steps``) naming the first
        non-finite step. Nothing to read when every step is checked."""
        if not self.device_guard:
            return
        seen = self.guard.read_count
        count, amp, first = self.guard.read()
        self.skipped_steps = self.skipped_before + count
        self.amp_skipped_steps = self.amp_before + amp
        if count > seen:
            self.stopping.read_back(first, self.skipped_before + seen, self.skipped_steps,
                                    self.epoch, len(self.phases))

    def train_step(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> dict | None:
        """One optimizer step of every phase on a batch: on the device guard's path
        (:meth:`_device_step`) or checked on the host (:meth:`_checked_step`)."""
        if self.device_guard:
            return self._device_step(x, y, weight)
        return self._checked_step(x, y, weight)

    def _device_step(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> dict:
        """One optimizer step of every phase, with no read from the device: a non-finite loss
        term or gradient sets the optimizer's ``found_inf``, so its fused step leaves the
        weights and its state untouched (and the step of every later phase of the batch);
        the guard counts it. The step counter and schedules move on (a skipped step is a
        step). Returns the terms of all phases (``loss`` is the first phase's); the caller
        asks ``guard.end_step()`` whether the step counted."""
        clip = self.t.grad_clip
        merged: dict[str, torch.Tensor] = {}
        fp16 = self.scaler.is_enabled()
        self.guard.start_step()
        bad_terms_any = None
        for name in self.phases:
            with self.autocast():
                terms = self.forward(x, y, self.step, name)
            values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
            bad_terms = ~torch.isfinite(values).all()
            bad_terms_any = bad_terms if bad_terms_any is None else bad_terms_any | bad_terms
            opt = self.optim[name]
            opt.zero_grad(set_to_none=True)
            loss = terms["loss"] if weight == 1.0 else terms["loss"] * weight
            self.scaler.scale(loss).backward()
            params = self.optim.params[name]
            grads = [p.grad for p in params if p.grad is not None]
            if fp16:   # the scaler skips on inf/NaN gradients itself (and counts as amp);
                # a bad loss term makes every gradient NaN, so it skips that step too
                found = self.guard.phase(name, list(terms), values, bad_terms, None,
                                         self.step, self.epoch + 1)
                if grads:
                    torch._foreach_mul_(grads, torch.where(found > 0, math.nan, 1.0))
                if clip:
                    self.scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, float(clip))
                self.scaler.step(opt)
            else:
                norm = (torch.nn.utils.clip_grad_norm_(params, float(clip)) if clip
                        else total_norm(grads))
                opt.found_inf = self.guard.phase(name, list(terms), values, bad_terms,
                                                 ~torch.isfinite(norm), self.step,
                                                 self.epoch + 1)
                try:
                    opt.step()
                finally:
                    opt.found_inf = None
            merged.update(terms if not merged else {k: v for k, v in terms.items() if k != "loss"})
        if fp16:
            scale = getattr(self.scaler, "_scale", None)   # (updated in place)
            scale = scale.clone() if scale is not None else None
            self.scaler.update()
            after = getattr(self.scaler, "_scale", None)
            if scale is not None and after is not None:   # backed off: the scaler skipped
                self.guard.amp += ((after < scale) & ~bad_terms_any).long()
        self.optim.step_schedules(self.phases)
        self.step += 1
        return merged

    def _checked_step(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> dict | None:
        """One optimizer step of every phase on a batch; the terms of all phases, where
        ``loss`` is the first phase's (the run's headline loss). A non-finite loss term or
        gradient stops the run (``trainer.nonfinite=stop``) or skips the step (``skip``: None
        is returned; the step counter and schedules do not move, and the phases before the
        non-finite one keep their update)."""
        clip = self.t.grad_clip
        merged: dict[str, torch.Tensor] = {}
        fp16 = self.scaler.is_enabled()
        stepped = False   # whether a phase of this batch has stepped its optimizer
        for name in self.phases:
            with self.autocast():
                terms = self.forward(x, y, self.step, name)
            values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
            if self.stopping.agree_step(not bool(torch.isfinite(values).all())):
                bad = [k for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
                return self._non_finite(name, f"loss term {', '.join(bad) or 'on another rank'}",
                                        terms, stepped)
            opt = self.optim[name]
            opt.zero_grad(set_to_none=True)
            loss = terms["loss"] if weight == 1.0 else terms["loss"] * weight
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(opt)
            params = self.optim.params[name]
            if not fp16:   # fp16: the scaler finds inf/NaN gradients and skips the step itself
                # the check alone computes the norm, without clip_grad_norm_'s pass that
                # multiplies every gradient by 1.0 (0.2-0.3 ms of a 3 ms CPU step)
                norm = (torch.nn.utils.clip_grad_norm_(params, float(clip)) if clip
                        else total_norm([p.grad for p in params if p.grad is not None]))
                if not bool(torch.isfinite(norm)):
                    return self._non_finite(name, "gradient", terms, stepped)
            elif clip:
                torch.nn.utils.clip_grad_norm_(params, float(clip))
            self.scaler.step(opt)
            stepped = True
            merged.update(terms if not merged else {k: v for k, v in terms.items() if k != "loss"})
        if fp16:
            scale = self.scaler.get_scale()
            self.scaler.update()
            if self.scaler.get_scale() < scale:
                self.amp_skipped_steps += 1
        self.optim.step_schedules(self.phases)
        self.step += 1
        return merged

    def _non_finite(self, phase: str, what: str, terms: dict, stepped: bool) -> None:
        """Skip the step (counted) or stop (NonFiniteError), by ``trainer.nonfinite``."""
        self.optim.zero_grad()
        if self.scaler.is_enabled() and stepped:
            self.scaler.update()   # an earlier phase stepped: close the scaler's iteration
        if self.stopping.non_finite(what, terms, self.step, self.epoch, phase, len(self.phases),
                                    self.skipped_steps):
            self.skipped_steps += 1
        return None

    @torch.no_grad()
    def evaluate(self, split: Split) -> dict:
        """The mean of every term over a split (several processes: each its contiguous part,
        then summed over the ranks)."""
        self.model.eval()
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        limit = self.t.get("limit_eval_batches")   # debug=fast: the first batches only
        if limit:
            split = split.part(0, int(limit) * int(self.t.eval_batch_size))
        a, b = distributed.shard(len(split))
        part = split.part(a, b) if self.world > 1 else split
        for x, y in self.data.eval_batches(part, int(self.t.eval_batch_size)):
            with self.autocast():
                terms = self.objective(self.model, x, y, step=self.step, train=False)
            for k, v in terms.items():
                sums[k] += v.detach().float() * len(x)
        sums, _ = distributed.sum_dict(sums, 0)
        return {k: (v / len(split)).item() for k, v in sums.items()}
