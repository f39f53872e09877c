"""``trainer.profile_steps=N`` (``debug=profile``): the PyTorch profiler over N training steps
(after one warm-up step), written into the run directory as ``profile/trace.json`` (open it in
chrome://tracing or https://ui.perfetto.dev) and ``profile/ops.txt`` (the operators by their
own time)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger("vae_train")


class StepProfiler:
    """Steps the profiler after every optimizer step (a step hook of the trainer)."""

    def __init__(self, run_dir: Path, steps: int, device: torch.device):
        from torch.profiler import ProfilerActivity, profile, schedule

        self.out, self.steps, self.written = Path(run_dir) / "profile", int(steps), False
        self.stepped = 0   # steps seen (the first is the warm-up)
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        else:
            # kineto (the profiler's library) asks for GPUs even for a CPU profile and prints
            # "ERROR: ... gpuGetDeviceCount failed" (and USDT lines) on a machine without
            # one: on CPU its messages are all noise. Read when the profiler starts; a
            # KINETO_LOG_LEVEL of the user's own is kept.
            os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        self.sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        self.prof = profile(activities=activities, record_shapes=True,
                            schedule=schedule(wait=0, warmup=1, active=self.steps, repeat=1),
                            on_trace_ready=self._write)
        self.prof.start()

    def __call__(self, trainer) -> None:
        if not self.written:
            self.stepped += 1
            self.prof.step()

    def _write(self, prof) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.out / "trace.json"))
        table = prof.key_averages().table(sort_by=self.sort, row_limit=30)
        (self.out / "ops.txt").write_text(table + "\n")
        self.written = True
        done = min(self.steps, max(0, self.stepped - 1))
        short = (f" (of trainer.profile_steps={self.steps}: the run had no more steps)"
                 if done < self.steps else "")
        log.info("profiled %d training steps%s: %s (operators by their own time) and %s "
                 "(chrome://tracing, ui.perfetto.dev)", done, short, self.out / "ops.txt",
                 self.out / "trace.json")

    def close(self) -> None:
        try:
            self.prof.stop()
        except Exception:  # noqa: BLE001 - a profiler that never started its active window
            pass
        if not self.written:
            log.warning("trainer.profile_steps=%d: the run had %d training step(s), the first "
                        "a warm-up, so nothing was profiled", self.steps, self.stepped)
