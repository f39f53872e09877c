"""The single entry point: compose -> build -> fit -> test -> metrics.json.

``python -m vae_train [overrides]`` and the ``vae-train`` console script both call :func:`main`.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from vae_train import CONFIG_DIR, argv, distributed, launchers, patches, rundir, sweeps, trust
from vae_train.build import build
from vae_train.config import validate
from vae_train.device import resolve_device, wants_channels_last
from vae_train.errors import NonFiniteError, UserError, first_line, traceback_to_files, unexpected
from vae_train.files import DiskError, write_json
from vae_train.lock import RunDirInUse, RunLock
from vae_train.logging import make_loggers
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


def _check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run names only classes it may build (vae_train.trust); a fresh one does not
    train over another run's results (vae_train.rundir); the files a run writes can be
    written (not folders)."""
    rundir.check_targets(run_dir)
    if cfg.get("resume"):
        trust.check_config(OmegaConf.to_container(cfg, resolve=False), f"resume={cfg.resume}",
                           bool(cfg.get("trust_run_code", False)))
    elif distributed.is_main():
        rundir.refuse_fresh_start(run_dir, bool(cfg.get("overwrite", False)))


def _run(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    _check_run_dir(cfg, run_dir)
    validate(cfg)
    if "root" in cfg.dataset:  # saved with the checkpoint: evaluate/sample work from anywhere
        with open_dict(cfg):
            cfg.dataset.root = str(Path(cfg.dataset.root).expanduser().resolve())
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
    tb = make_loggers(cfg, run_dir, enabled=main_rank)   # rank 0 alone writes the run directory
    try:
        trainer = Trainer(cfg, model, objective, dm, device, amp_dtype, run_dir, tb)
        hc = HydraConfig.get()
        trainer.overrides = argv.kept_for_resume(list(hc.overrides.task), list(hc.overrides.hydra))
        if cfg.resume:
            trainer.restore(Path(cfg.resume))
            if main_rank:   # evaluations of the old weights: stale once an epoch is saved
                trainer.before_first_save = lambda: rundir.set_evaluations_aside(run_dir)
        try:
            trainer.fit()
        except (NonFiniteError, DiskError) as e:   # the failure, where and what, for the user
            if main_rank:                          # and the report
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
    except (rundir.RunDirRefused, RunDirInUse) as e:
        # another run's directory: nothing may be written into it, not even into its log
        _console_only()
        patches.restore_hydra_files(HydraConfig.get().runtime.output_dir)
        if sweeping:
            return sweeps.refused(e)
        log.error("error: %s", e)
        sys.exit(2)
    except UserError as e:
        if sweeping:
            return sweeps.record_failure(e)
        log.error("error: %s", e)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - a crash in one sweep job (out of memory, ...)
        if sweeping:
            return sweeps.record_failure(e)
        _unexpected(e)


def _console_only() -> None:
    """Detach the log file handlers (the run directory's train.log) of this process."""
    for handler in list(logging.root.handlers):
        if isinstance(handler, logging.FileHandler):
            logging.root.removeHandler(handler)
            handler.close()


def _unexpected(e: BaseException) -> None:
    """One line for the user (the traceback goes to the run's train.log), exit status 1."""
    import os

    if os.environ.get("VAE_TRAIN_TRACEBACK"):
        raise e
    files = traceback_to_files()
    where = (f"the traceback is in {files[0]}" if files
             else "VAE_TRAIN_TRACEBACK=1 shows where")
    print(unexpected(e, f"lower trainer.batch_size or the model's size ({where})", where),
          file=sys.stderr)
    sys.exit(1)


def main() -> None:
    logging.raiseExceptions = False   # a log line that cannot be written (a full disk) is lost,
    patches.keep_hydra_backups()      # not a traceback
    patches.one_line_hydra_errors()
    threading.excepthook = _thread_error
    try:
        launchers.check(sys.argv[1:])
        args = argv.sweep_argv(argv.resume_argv(argv.absolute_searchpath(
            argv.null_groups(sys.argv[1:]))))
        sys.argv = [sys.argv[0], *argv.join_processes(args)]
        if distributed.is_main():
            _before_hydra(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted before the run started; nothing was written", file=sys.stderr)
        sys.exit(130)
    try:
        _main()
    except KeyboardInterrupt:   # (inside training, the trainer says where it stopped)
        print("interrupted before training started; start the run again", file=sys.stderr)
        sys.exit(130)
    finally:
        distributed.close()


def _thread_error(args) -> None:
    """An exception in a background thread (a library's writer thread): one log line."""
    if args.exc_type is SystemExit:
        return
    log.error("error in background thread %s: %s", getattr(args.thread, "name", "?"),
              first_line(args.exc_value) if args.exc_value else args.exc_type.__name__)


def _before_hydra(args: list[str]) -> None:
    """A run directory named on the command line (``hydra.run.dir=``, or by ``resume=``) that
    another process uses, or that holds another run's results, is refused before Hydra
    writes its config or log into it; so is a sweep directory (``hydra.sweep.dir=``) that
    holds a finished sweep (Hydra would rewrite its ``multirun.yaml``)."""
    given = {argv.override_key(a): argv.unquote(a.split("=", 1)[1]) for a in args if "=" in a}
    overwrite = given.get("overwrite", "false").lower() == "true"
    if argv.multirun(args):
        sweep_dir = given.get("hydra.sweep.dir")
        if sweep_dir and (Path(sweep_dir) / "multirun.yaml").is_file() and not overwrite:
            done = [d for d in sorted(Path(sweep_dir).iterdir())
                    if d.is_dir() and rundir.results(d)]
            if done:
                raise rundir.RunDirRefused(
                    f"sweep directory {sweep_dir} holds a sweep whose runs have results "
                    f"({len(done)} of them, e.g. {done[0].name}); nothing was changed. Sweep "
                    "into another hydra.sweep.dir, or replace them with overwrite=true")
        return
    run_dir = argv.run_dir_of(args)
    if not run_dir or not Path(run_dir).is_dir():
        return
    RunLock(run_dir).refuse_if_held()
    if given.get("resume") in (None, "", "null") and not overwrite:
        rundir.refuse_fresh_start(run_dir, False)


def _main() -> None:
    # Hydra rewrites <run>/.hydra/ before the run checks anything: a resume that fails (a bad
    # override, a checkpoint that does not fit) must not leave its config there, nor a second
    # process pointed at a run directory in use change it (patches.keep_hydra_backups).
    run_dir = argv.run_dir_of(sys.argv)
    try:
        _hydra_main()
    except SystemExit as e:
        if e.code not in (0, None) and run_dir and distributed.is_main():
            patches.restore_hydra_files(run_dir, only_existing=True)
        raise
    sweeps.report_failures()


if __name__ == "__main__":
    main()
