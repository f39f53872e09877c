"""TensorBoard: scalars for every loss term, image grids, and the hparams table."""

from __future__ import annotations

import math

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


class TBLogger:
    def __init__(self, log_dir, enabled: bool = True):
        self.writer = SummaryWriter(log_dir=str(log_dir)) if enabled else None

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", float(v), step)

    def images(self, figs: dict, step: int, prefix: str = "images") -> None:
        if self.writer is None:
            return
        for name, img in figs.items():
            self.writer.add_image(f"{prefix}/{name}", img, step)

    def hparams(self, hparam_dict: dict, metrics: dict, step: int) -> None:
        """The HPARAMS tab's row for this run, written into the run's own event file."""
        if self.writer is None:
            return
        metrics = {f"hparam/{k}": float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))}
        _, ssi, sei = hparams(hparam_dict, metrics)
        # No experiment summary: TensorBoard then builds the table from every run's session,
        # marks the hyperparameters whose values differ between runs (a sweep's swept keys)
        # and shows those columns first.
        fw = self.writer.file_writer   # (made when the writer is; public since torch 1.x)
        for summary in (ssi, sei):
            fw.add_summary(summary, step)
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
