"""When training stops early, and how: SIGINT/SIGTERM (finish the step, save, exit with the
command that continues), the non-finite policy (a NaN/Inf loss term or gradient stops the run
or skips the step), and, with several processes, every rank agreeing to stop or skip at the
same step."""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager

from vae_train import distributed
from vae_train.errors import NonFiniteError

log = logging.getLogger(__name__)


class Stopping:
    """``nonfinite``: ``stop`` or ``skip`` (at most ``max_skipped`` steps)."""

    def __init__(self, world: int, nonfinite: str, max_skipped: int):
        self.world, self.nonfinite, self.max_skipped = world, nonfinite, int(max_skipped)
        self.signal: str | None = None   # the name of a signal that asked to stop
        self.agreed = False              # several processes: a signal seen by any rank

    # -- signals ---------------------------------------------------------------------------
    @contextmanager
    def signals(self):
        """While inside: SIGINT (Ctrl-C) and SIGTERM (a scheduler's stop) ask to stop after
        the current step; a second Ctrl-C stops at once (KeyboardInterrupt)."""
        self.signal = None
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:   # not the main thread (a launcher's worker): default handling
                pass
        try:
            yield
        finally:
            for sig, handler in previous.items():
                if handler is not None:   # None: installed from C, cannot be put back
                    signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt   # a second Ctrl-C: stop now
        self.signal = signal.Signals(signum).name

    def requested(self, agree: bool = False) -> bool:
        """Whether a signal asked to stop. Several processes stop at the same step: each
        step's agreement (:meth:`agree_step`) or, with ``agree``, one of its own."""
        if self.world == 1:
            return self.signal is not None
        if agree:
            self.agreed |= distributed.any_true(self.signal is not None)[0]
        return self.agreed

    def agree_step(self, bad: bool) -> bool:
        """Several processes: whether any rank found a non-finite term this step (so every
        rank skips or stops), and whether any was asked to stop (so all stop at one step)."""
        if self.world == 1:
            return bad
        bad, stop = distributed.any_true(bad, self.signal is not None)
        self.agreed |= stop
        return bad

    def exit(self, where: str, rank: int, run_dir) -> None:
        """Leave after a signal, with the command that continues the run."""
        name = self.signal or "SIGTERM"   # (a rank that learnt of it from another)
        if rank == 0:
            log.error("stopped by %s %s. Continue with: %s resume=%s", name, where,
                      distributed.command(), run_dir)
        raise SystemExit(128 + int(signal.Signals[name]))

    # -- non-finite values -------------------------------------------------------------------
    def non_finite(self, what: str, terms: dict, step: int, epoch: int, phase: str,
                   phases: int, skipped: int) -> bool:
        """A non-finite ``what`` at optimizer step ``step + 1``: True to skip the step
        (``trainer.nonfinite=skip``, under the limit); otherwise NonFiniteError, naming the
        step and the values of every term."""
        values = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in terms.items())
        where = f"step {step + 1} (epoch {epoch + 1}" + (f", phase {phase})" if phases > 1
                                                          else ")")
        if self.nonfinite == "skip" and skipped < self.max_skipped:
            skipped += 1
            if skipped in (1, 10, 100) or skipped % 1000 == 0:
                log.warning("non-finite %s at %s: step skipped (%d so far; at most "
                            "trainer.max_skipped_steps=%d)", what, where, skipped,
                            self.max_skipped)
            return True
        limit = (f"; {skipped} steps were skipped already, trainer.max_skipped_steps reached"
                 if self.nonfinite == "skip" else "")
        kept = f"checkpoints keep epoch {epoch}" if epoch else "no checkpoint was written"
        raise NonFiniteError(f"non-finite {what} at {where}: {values}{limit}; {kept}. "
                             f"{self.advice()}", step=step + 1, term=what)

    def advice(self) -> str:
        """What to try, for the mode the run is in."""
        if self.nonfinite == "skip":
            return ("Lower optimizer.lr, set trainer.grad_clip, or raise "
                    "trainer.max_skipped_steps")
        return ("Lower optimizer.lr, set trainer.grad_clip, or trainer.nonfinite=skip to skip "
                "such steps")

    def read_back(self, first, seen: int, skipped: int, kept_epoch: int, phases: int) -> None:
        """The device guard read at a check point (training.guard): ``skipped`` steps of the
        run were non-finite, ``seen`` of them known at the last read, ``first`` (a BadStep)
        the first of this process. Stop: NonFiniteError naming that step. Skip: a warning at
        the 1st, 10th, 100th and every 1000th, and NonFiniteError past the limit."""
        where = f"step {first.step} (epoch {first.epoch}" + (
            f", phase {first.phase})" if phases > 1 else ")")
        if self.nonfinite == "skip" and skipped <= self.max_skipped:
            marks = [n for n in range(seen + 1, skipped + 1)
                     if n in (1, 10, 100) or n % 1000 == 0]
            if marks:
                log.warning("non-finite steps skipped: %d so far, the first a non-finite %s at "
                            "%s (at most trainer.max_skipped_steps=%d)", skipped, first.what,
                            where, self.max_skipped)
            return
        values = ", ".join(f"{k} {v:.4g}" for k, v in first.terms.items())
        limit = (f"; {skipped} steps were skipped, trainer.max_skipped_steps reached"
                 if self.nonfinite == "skip" else "")
        kept = f"checkpoints keep epoch {kept_epoch}" if kept_epoch else "no checkpoint was written"
        raise NonFiniteError(f"non-finite {first.what} at {where}: {values}{limit}; {kept}. "
                             f"{self.advice()}", step=first.step, term=first.what)

    @staticmethod
    def diverged(epoch: int, kept_epoch: int, step: int, train: dict) -> NonFiniteError:
        """The error for an epoch whose mean training loss is not finite (or which has none:
        every step skipped)."""
        kept = (f"checkpoints keep epoch {kept_epoch}" if kept_epoch
                else "no checkpoint was written")
        if "loss" not in train:
            what = f"every step of epoch {epoch} was skipped (non-finite)"
        else:
            terms = ", ".join(f"{k} {train[k]:.4g}" for k in ("recon", "kl") if k in train)
            what = f"the mean train loss of epoch {epoch} is {train['loss']}" + (
                f" ({terms})" if terms else "")
        return NonFiniteError(f"training diverged: {what}; {kept}. Lower optimizer.lr or set "
                              "trainer.grad_clip", step=step, term="loss")
