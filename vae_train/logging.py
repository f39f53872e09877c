"""TensorBoard: scalars for every loss term, image grids, and the hparams table.

TensorBoard is a view of the run, not its record: when its event file cannot be written (the
run directory deleted under a running sweep, a full disk), one warning says so and the run goes
on without it; the checkpoints and ``metrics.json`` report their own failures."""

from __future__ import annotations

import functools
import logging
import math

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


log = logging.getLogger(__name__)


def _guarded(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.writer is None:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tensorboard's writer thread or file failed
            self.failed(e)
            return None

    return call


class TBLogger:
    def __init__(self, log_dir, enabled: bool = True):
        self.writer = None
        if enabled:
            try:
                self.writer = SummaryWriter(log_dir=str(log_dir))
            except OSError as e:
                from vae_train.files import disk_error

                raise disk_error(e, log_dir) from None

    def failed(self, e: BaseException) -> None:
        writer, self.writer = self.writer, None
        log.warning("TensorBoard logging stopped: %s: %s", type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "")
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass

    @_guarded
    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", float(v), step)

    @_guarded
    def images(self, figs: dict, step: int, prefix: str = "images") -> None:
        if self.writer is None:
            return
        for name, img in figs.items():
            self.writer.add_image(f"{prefix}/{name}", img, step)

    @_guarded
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
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception as e:  # noqa: BLE001
                log.warning("TensorBoard's event file could not be closed: %s", e)
