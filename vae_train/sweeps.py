"""A sweep's failed jobs: each writes ``failed.json`` in its run directory and the sweep goes
on; at the end a Hydra callback collects them, whatever launcher ran the jobs, and the command
lists them and exits with status 1."""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vae_train import distributed
from vae_train.errors import UserError
from vae_train.files import write_json

log = logging.getLogger("vae_train")

# Sweep jobs that failed: (run directory, reason), filled by SweepFailures at the sweep's end.
FAILED: list[tuple[str, str]] = []


def record_failure(exc: BaseException) -> float:
    """In a sweep, one failed job must not lose the others: write ``failed.json`` with the
    reason into its run directory and let the sweep go on (the objective value is NaN)."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    if not distributed.is_main():   # several processes in one job: rank 0 records it
        return math.nan
    reason = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    record = {"status": "failed", "error": reason, "overrides": list(hc.overrides.task)}
    if not isinstance(exc, UserError):
        record["traceback"] = traceback.format_exc()
    if not run_dir.is_dir():   # deleted under the sweep: said, not written back
        log.error("error: %s (the sweep goes on)", reason)
        FAILED.append((str(run_dir), reason.splitlines()[0]))
        return math.nan
    try:
        write_json(run_dir / "failed.json", record)
    except UserError as e:   # a full disk: the reason is still said
        log.error("error: %s (not recorded: %s; the sweep goes on)", reason, e)
        return math.nan
    log.error("error: %s (recorded in %s; the sweep goes on)", reason, run_dir / "failed.json")
    return math.nan


def refused(exc: BaseException) -> float:
    """In a sweep, a job whose run directory is not its own (another run's results, another
    process's lock): said on the console, listed at the end, nothing written into it."""
    run_dir = HydraConfig.get().runtime.output_dir
    if distributed.is_main():
        log.error("error: %s (the sweep goes on)", exc)
        FAILED.append((str(run_dir), str(exc).splitlines()[0]))
    return math.nan


class SweepFailures(Callback):
    """At the end of a multirun, collect the jobs of this sweep that wrote ``failed.json``.
    It reads the files, so it works whatever launcher ran the jobs (in this process, in
    joblib workers, on a SLURM cluster)."""

    def __init__(self) -> None:
        self.start = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.start = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        found = [f for f in sweep_dir.rglob("failed.json") if f.stat().st_mtime >= self.start - 1]
        for f in sorted(found, key=lambda f: f.stat().st_mtime):
            try:
                reason = json.loads(f.read_text()).get("error") or "unknown"
            except (OSError, ValueError):
                reason = "failed.json is unreadable"
            FAILED.append((str(f.parent), reason.splitlines()[0]))


def report_failures() -> None:
    """After a sweep: list the failed jobs and exit with status 1 (nothing if none failed)."""
    if not FAILED:
        return
    import sys

    print(f"error: {len(FAILED)} sweep job(s) failed or were refused (a failed job has a "
          "failed.json with the reason; the others finished):", file=sys.stderr)
    for run_dir, reason in FAILED:
        print(f"  {run_dir}: {reason}", file=sys.stderr)
    sys.exit(1)
