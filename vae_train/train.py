"""The single entry point: compose -> build -> fit -> test -> metrics.json.

``python -m vae_train [overrides]`` and the ``vae-train`` console script both call :func:`main`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vae_train import CONFIG_DIR, argv, distributed, launchers, sweeps
from vae_train.build import build
from vae_train.config import validate
from vae_train.device import resolve_device, wants_channels_last
from vae_train.errors import NonFiniteError, UserError
from vae_train.files import write_json
from vae_train.lock import RunLock
from vae_train.logging import TBLogger
from vae_train.training import state
from vae_train.training.reporting import Reporter
from vae_train.training.trainer import Trainer

log = logging.getLogger("vae_train")



def run(cfg: DictConfig) -> float:
    """Train the run ``cfg`` describes in Hydra's run directory; returns the test loss."""
    if distributed.init() and not distributed.is_main():   # (torchrun: already in main())
        distributed.quiet_worker_logging()
    # One process per run directory; of several processes, rank 0 holds the lock for all.
    lock = RunLock(HydraConfig.get().runtime.output_dir) if distributed.is_main() else None
    refused = None
    try:
        if lock is not None:
            lock.acquire()
    except UserError as e:
        refused = e
    if distributed.any_true(refused is not None)[0]:   # every rank stops, rank 0 says why
        raise refused if refused is not None else SystemExit(2)
    try:
        return _run(cfg)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: DictConfig) -> float:
    validate(cfg)
    if "root" in cfg.dataset:  # saved with the checkpoint: evaluate/sample work from anywhere
        with open_dict(cfg):
            cfg.dataset.root = str(Path(cfg.dataset.root).expanduser().resolve())
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    device, amp_dtype = resolve_device(cfg.device)
    device = distributed.place(device)   # several processes: cuda:<local rank>
    main_rank, world = distributed.is_main(), distributed.world_size()
    torch.manual_seed(int(cfg.seed))
    dm, objective, model = build(cfg, device)
    if dm.stats is not None:   # the data set's standardisation: with the weights, and readable
        with open_dict(cfg):
            cfg.dataset.stats = dm.stats
        if main_rank:
            write_json(run_dir / "data_stats.json", dm.stats)
    if wants_channels_last(cfg.device.channels_last, model, device):
        model.to(memory_format=torch.channels_last)   # conv kernels' preferred layout on GPUs
        dm.memory_format = torch.channels_last
    distributed.seed_rank(int(cfg.seed))   # the same initial weights, each rank its own noise
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s on %s %s (train %d, val %d, test %d), %s parameters, %s, precision %s",
             type(model).__name__, dm.name, "x".join(map(str, dm.shape)), len(dm.train),
             len(dm.val), len(dm.test), f"{n_params:,}", device, cfg.device.precision)
    if world > 1:
        log.info("data-parallel over %d processes: %d examples per process and step, %d per "
                 "step in all", world, cfg.trainer.batch_size, world * cfg.trainer.batch_size)
    log.info("run directory: %s", run_dir)
    tb = TBLogger(run_dir, enabled=main_rank)   # rank 0 alone writes the run directory
    try:
        trainer = Trainer(cfg, model, objective, dm, device, amp_dtype, run_dir, tb)
        hc = HydraConfig.get()
        trainer.overrides = argv.kept_for_resume(list(hc.overrides.task), list(hc.overrides.hydra))
        if cfg.resume:
            trainer.restore(Path(cfg.resume))
        try:
            trainer.fit()
        except NonFiniteError as e:   # the failure, where and what, for the user and the report
            if main_rank:
                Reporter.failed(trainer, run_dir, e)
            raise
        best_epoch = state.load_best(trainer)
        test = trainer.evaluate(dm.test)
        metrics = trainer.report.run_end(trainer, cfg, run_dir, model, test, best_epoch,
                                         n_params, device, world)
    finally:
        tb.close()
    return float(metrics["test_loss"])


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    from hydra.types import RunMode

    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return run(cfg)
    except UserError as e:
        if sweeping:
            return sweeps.record_failure(e)
        log.error("error: %s", e)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - a crash in one sweep job (out of memory, ...)
        if sweeping:
            return sweeps.record_failure(e)
        raise


def main() -> None:
    try:
        launchers.check(sys.argv[1:])
        args = argv.sweep_argv(argv.resume_argv(argv.absolute_searchpath(sys.argv[1:])))
        sys.argv = [sys.argv[0], *argv.join_processes(args)]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        _main()
    finally:
        distributed.close()


def _main() -> None:
    # Hydra rewrites <run>/.hydra/ before the run checks anything: a resume that fails (a bad
    # override, a checkpoint that does not fit) must not leave its config there. (Also for a
    # second process pointed at a run directory in use: it must not change it.)
    run_dir = argv.run_dir_of(sys.argv)
    saved = {}
    if run_dir and distributed.is_main():
        saved = {f: f.read_bytes() for f in (Path(run_dir) / ".hydra").glob("*.yaml")}
    try:
        _hydra_main()
    except SystemExit as e:
        if e.code not in (0, None):
            for f, data in saved.items():
                f.write_bytes(data)
        raise
    sweeps.report_failures()


if __name__ == "__main__":
    main()
