"""What a run reports: at the end of each epoch the history record, the loggers' scalars, row
and pictures (TensorBoard, csv, wandb, mlflow: ``vae_train.logging``) and one log line; at the
end of the run ``metrics.json`` (with the run's tags and notes), the pictures with the best
weights, the test scalars and the run's hyperparameter row; ``metrics.json`` of a run a
non-finite value stopped."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from omegaconf import DictConfig

from vae_train.distributions import bits_per_dim
from vae_train.errors import UserError
from vae_train.files import write_json
from vae_train.logging import Loggers, hparams_of, run_labels
from vae_train.losses import SCHEDULE_TERMS
from vae_train.pictures import save_figures, training_figures

LAYER_KL = re.compile(r"kl_\d+")     # the KL of one layer of a hierarchy (kl_1 .. kl_L)


def speed_unit(shape) -> str:
    """Examples per second, named: sequences for videos (T, C, H, W), else images."""
    return "seq/s" if len(shape) == 4 else "img/s"

log = logging.getLogger("vae_train")


class Reporter:
    """Writes what the trainer measured. ``tb`` is the run's loggers (``make_loggers``: none on
    ranks other than 0; a single logger such as a ``TBLogger`` is wrapped into
    :class:`Loggers`); pictures are drawn from a fixed validation batch (fig_x, fig_y)."""

    def __init__(self, tb, trainer_cfg, rank: int, fig_x, fig_y, seed: int = 0):
        self.tb = tb if isinstance(tb, Loggers) else Loggers({"tensorboard": tb})
        self.t, self.rank = trainer_cfg, rank
        self.fig_x, self.fig_y, self.seed = fig_x, fig_y, seed

    def figures(self, model) -> dict:
        return training_figures(model, self.fig_x, self.fig_y, len(self.fig_x), seed=self.seed)

    def epoch_end(self, model, epoch: int, step: int, lr: float, train: dict, val: dict) -> None:
        """The loggers' scalars of the epoch's terms and, every ``trainer.image_every_epochs``,
        its pictures. The epoch's row (csv) comes from :meth:`epoch_record`, once the record
        is complete."""
        self.tb.scalars("train", {k: v for k, v in train.items() if k != "seconds"}, step)
        self.tb.scalars("val", val, step)
        self.tb.scalars("opt", {"lr": lr, "epoch": epoch}, step)
        every = int(self.t.image_every_epochs)
        if every and epoch % every == 0 and self.rank == 0 and self.t.get("pictures", True):
            self.tb.images(self.figures(model), step)

    def epoch_record(self, record: dict, step: int) -> None:
        """The loggers' row of one epoch: its whole history record as ``metrics.json`` keeps
        it (the trainer calls this once the record is complete: callbacks, epoch time)."""
        self.tb.epoch(record, step)

    @staticmethod
    def history_record(epoch: int, step: int, lr: float, skipped: int, amp_skipped: int,
                       train: dict, val: dict) -> dict:
        return {"epoch": epoch, "step": step, "lr": lr, "skipped_steps": skipped,
                "amp_skipped_steps": amp_skipped, **{f"train_{k}": v for k, v in train.items()},
                **{f"val_{k}": v for k, v in val.items()}}

    @staticmethod
    def epoch_line(epoch: int, total: int, train: dict, val: dict, improved: bool,
                   unit: str = "img/s") -> None:
        """One line per epoch: the losses, the first four other validation terms (the KL of
        each layer of a hierarchy folded into ``kl``: ``kl 15.3 (4.2+3.6+3.7+3.8)``), speed."""
        layers = [v for k, v in val.items() if LAYER_KL.fullmatch(k)]

        def fmt(k, v):
            text = f"{k} {v:.2f}" if abs(v) >= 1 else f"{k} {v:.3f}"
            if k == "kl" and len(layers) > 1:
                text += " (" + "+".join(f"{x:.1f}" for x in layers) + ")"
            return text

        shown = [(k, v) for k, v in val.items() if k != "loss" and k not in SCHEDULE_TERMS
                 and not LAYER_KL.fullmatch(k)]
        detail = ", ".join(fmt(k, v) for k, v in shown[:4])
        log.info("epoch %d/%d  train %.2f  val %.2f (%s)  %.0f %s  %.1fs%s",
                 epoch, total, train["loss"], val["loss"], detail,
                 train["images_per_sec"], unit, train["seconds"], "  best" if improved else "")

    def run_end(self, tr, cfg: DictConfig, run_dir: Path, model, test: dict, best_epoch: int,
                n_params: int, device, world: int) -> dict:
        """``metrics.json`` (rank 0, with the run's ``tags`` and ``notes``), the pictures with
        the best weights, the test scalars and the hyperparameter row; returns the metrics. On 8-bit images the test -ELBO is also
        given in bits per dimension (``test_bpd``)."""
        tags, notes = run_labels(cfg)
        if tr.data.values == "8bit" and "elbo" in test:
            test = {**test, "bpd": bits_per_dim(-test["elbo"], tr.data.shape)}
        metrics = {
            **{f"test_{k}": v for k, v in test.items() if k not in SCHEDULE_TERMS},
            "best_val_loss": tr.best_val if tr.best_epoch else math.nan,
            "best_epoch": best_epoch, "epoch": tr.epoch, "steps": tr.step,
            "images_per_sec": tr.train_images / tr.train_time if tr.train_time else math.nan,
            "train_seconds": tr.train_time,
            "skipped_steps": tr.skipped_steps,
            "amp_skipped_steps": tr.amp_skipped_steps,
            "num_params": n_params, "device": str(device),
            "precision": str(cfg.device.precision), "processes": world,
            "tags": tags, "notes": notes,
            "stopped_early": tr.stopped_early,
            "history": tr.history,
        }
        if self.rank != 0:
            return metrics
        write_json(run_dir / "metrics.json", metrics)
        if self.t.get("pictures", True):
            figs = self.figures(model)
            save_figures(figs, run_dir)
            self.tb.images({f"best_{k}": v for k, v in figs.items()}, tr.step)
        self.tb.scalars("test", test, tr.step)
        # The hyperparameter table's metric columns: the test terms and the best validation loss
        # (TensorBoard shows the first five by name: best_val_loss, test_elbo, test_kl, ...).
        self.tb.hparams(hparams_of(cfg), {k: v for k, v in metrics.items()
                                          if k.startswith("test_") or k == "best_val_loss"},
                        tr.step)
        parts = ", ".join(f"{k} {test[k]:.2f}" for k in ("recon", "kl") if k in test)
        if "bpd" in test:
            parts += f"; -elbo {test['bpd']:.3f} bits/dim"
        log.info("test loss %.2f nats/example (%s) with the best weights (epoch %d); %.0f %s",
                 metrics["test_loss"], parts, best_epoch, metrics["images_per_sec"],
                 speed_unit(tr.data.shape))
        log.info("wrote %s", run_dir / "metrics.json")
        return metrics

    @staticmethod
    def failed(tr, run_dir: Path, error) -> None:
        """``metrics.json`` of a run a non-finite value or the disk stopped: where and what.
        Best effort: on a full disk even this small file may not fit (the message is said on
        the console and in train.log either way)."""
        record = {"status": "failed", "error": str(error), "epoch": tr.epoch, "steps": tr.step,
                  "skipped_steps": tr.skipped_steps, "history": tr.history}
        if hasattr(error, "step"):
            record.update(failed_step=error.step, failed_term=error.term)
        try:
            write_json(run_dir / "metrics.json", record)
        except UserError:
            pass
