"""The single entry point: compose -> build -> fit -> test -> metrics.json.

``python -m vae_train [overrides]`` and the ``vae-train`` console script both call :func:`main`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vae_train import distributed, launchers
from vae_train.config import resolve_device, validate
from vae_train.data import DataModule, load_image_data
from vae_train.errors import NonFiniteError, UserError
from vae_train.files import write_json
from vae_train.lock import RunLock
from vae_train.logging import TBLogger
from vae_train.losses import ELBO, SCHEDULE_TERMS, BetaVAE, ModelObjective
from vae_train.pictures import figures, save_figures
from vae_train.trainer import Trainer, wants_channels_last

log = logging.getLogger("vae_train")

_PKG = Path(__file__).resolve().parent
# A wheel carries the configs inside the package; a source checkout has them at the top.
CONFIG_DIR = str(_PKG / "configs" if (_PKG / "configs").is_dir() else _PKG.parent / "configs")


# Config groups that say how a sweep runs, not what a run is.
SWEEP_GROUPS = ("launcher", "search", "sweep")


# -- resume: re-run the saved composition in the same run directory ---------------------------
def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1].replace("\\" + value[0], value[0])
    return value


def _quote(value) -> str:
    """A value for Hydra's override grammar: paths of sweep runs hold '=' and ','."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def find_run(path: str) -> tuple[Path | None, Path]:
    """(run directory or None, checkpoint) for a ``resume=`` value: a run directory, or a
    checkpoint file (inside its run directory, or copied anywhere)."""
    p = Path(_unquote(path)).expanduser()
    if not p.exists():
        raise UserError(f"resume={path}: no such file or directory; give a run directory "
                        "(outputs/<date>/<time>) or a checkpoint file")
    ckpt = p / "checkpoints" / "last.pt" if p.is_dir() else p
    if p.is_dir() and not (p / ".hydra").is_dir() and not ckpt.is_file():
        raise UserError(f"resume={path}: not inside a vae-train run directory (no .hydra/ and "
                        "no checkpoints/last.pt)")
    if not ckpt.is_file():
        raise UserError(f"resume={path}: {ckpt} does not exist (the run stopped before its first "
                        "epoch ended); start it again without resume=")
    run_dir = next((d for d in [ckpt.parent, *ckpt.parents] if (d / ".hydra").is_dir()), None)
    return (run_dir.resolve() if run_dir else None), ckpt.resolve()


def resume_argv(argv: list[str]) -> list[str]:
    """Rewrite a command line with ``resume=PATH`` into the overrides the checkpoint was trained
    with followed by the new ones (later wins), running in the checkpoint's run directory (a
    new one when the checkpoint was copied out of it)."""
    from vae_train import checkpoint

    resume = [a for a in argv if _override_key(a) == "resume"]
    if not resume or _unquote(resume[-1].split("=", 1)[1]) in ("", "null"):
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise UserError("resume= continues one run; it cannot be combined with -m/--multirun")
    run_dir, ckpt = find_run(resume[-1].split("=", 1)[1])
    # How the sweep was run (launcher, search, preset) is not part of the run: a resume is one
    # run in this process, and must not need the plugins that launched it.
    saved = [o for o in checkpoint.load(ckpt).get("overrides", [])
             if _override_key(o) not in SWEEP_GROUPS]
    merged: dict[str, str] = {}
    for o in [*saved, *(a for a in argv if "=" in a and not a.startswith("-"))]:
        merged[_override_key(o)] = o
    merged["resume"] = f"resume={_quote(ckpt)}"
    if run_dir is not None:
        merged.setdefault("hydra.run.dir", f"hydra.run.dir={_quote(run_dir)}")
    flags = [a for a in argv if "=" not in a or a.startswith("-")]
    return flags + list(merged.values())


def sweep_argv(argv: list[str]) -> list[str]:
    """In a sweep, name each job's directory by the swept keys only: every other key given on
    the command line goes into ``override_dirname.exclude_keys``."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return argv
    if any(a.startswith("hydra.job.config.override_dirname") for a in argv):
        return argv
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cli = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(cli)
    except Exception:  # noqa: BLE001 - Hydra reports bad overrides itself, in its own words
        return argv
    fixed = {o.key_or_group for o in parsed
             if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")}
    fixed |= {"dataset.root", "resume"}
    return [*argv, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(sorted(fixed))}]"]


# -- the run --------------------------------------------------------------------------------
def hparams_of(cfg: DictConfig) -> dict:
    """The run's chosen options for TensorBoard's HPARAMS tab: group choices, the usual
    knobs, and every key overridden on the command line."""
    out: dict = {}
    try:
        hc = HydraConfig.get()
        out.update({g: c for g, c in hc.runtime.choices.items()
                    if not g.startswith("hydra") and g not in SWEEP_GROUPS and isinstance(c, str)})
        keys = [_override_key(o) for o in hc.overrides.task]
    except ValueError:
        keys = []
    keys = ["model.latent_dim", "loss.beta", "optimizer.lr", "trainer.batch_size",
            "trainer.epochs", "seed", "dataset.binarize", "device.precision", *keys]
    for key in keys:
        if key in ("resume", "dataset.root") or key in out:
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if key == "device.precision":  # 32 and bf16 in one column: keep one type
            value = str(value)
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif value is not None:
            out[key] = str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
    return out


def _instantiate(node, group: str, **kwargs):
    """Build a config node's object; a wrong or foreign key becomes one line naming it."""
    try:
        return instantiate(node, **kwargs)
    except Exception as e:  # hydra wraps constructor errors
        cause = e.__cause__ or e
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError):
            raise UserError(f"{group}={node.get('_target_', '?').rsplit('.', 1)[-1]}: "
                            f"{str(cause).splitlines()[0]} (see README for the {group} options)"
                            ) from None
        raise


def build(cfg: DictConfig, device: torch.device):
    """Data, objective and model for a config (shapes and class counts from the data)."""
    with distributed.rank0_first():   # several processes: one downloads/renders, then the rest
        data = load_image_data(cfg.dataset)
    dm = DataModule(data, device, cfg.dataset.binarize, cfg.dataset.val_size,
                    cfg.dataset.split_seed, cfg.dataset.binarize_seed)
    dm.labeled = cfg.dataset.get("labeled")  # semi-supervised models read it in bind()
    objective = _instantiate(cfg.loss, "loss")
    likelihood = objective.make_likelihood(dm.shape[0])
    model = _instantiate(cfg.model, "model", input_shape=dm.shape, num_classes=dm.num_classes,
                         likelihood=likelihood)
    if hasattr(model, "loss_terms"):  # a model with its own objective (VQ-VAE, AAE, M2)
        name = cfg.model._target_.rsplit(".", 1)[-1]
        if not isinstance(objective, ELBO) or isinstance(objective, BetaVAE):
            raise UserError(f"model {name} trains its own objective ({model.objective_doc}); "
                            "drop the loss= choice (the default, loss=elbo, supplies only "
                            "loss.likelihood/sigma/learn_sigma)")
        objective = ModelObjective(model, likelihood=objective.likelihood,
                                   sigma=objective.sigma, learn_sigma=objective.learn_sigma)
    if cfg.dataset.get("labeled") is not None and not getattr(model, "semi_supervised", False):
        raise UserError(f"dataset.labeled={cfg.dataset.labeled}: only a semi-supervised model "
                        "(model=m2) can learn from part of the labels; drop dataset.labeled")
    objective.bind(model, dm)
    return dm, objective.to(device), model.to(device)


def run(cfg: DictConfig) -> float:
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
        trainer.overrides = [o for o in HydraConfig.get().overrides.task
                             if _override_key(o) != "resume"]
        if cfg.resume:
            trainer.restore(Path(cfg.resume))
        try:
            trainer.fit()
        except NonFiniteError as e:   # the failure, where and what, for the user and the report
            if not main_rank:
                raise
            write_json(run_dir / "metrics.json", {
                "status": "failed", "error": str(e), "failed_step": e.step, "failed_term": e.term,
                "epoch": trainer.epoch, "steps": trainer.step,
                "skipped_steps": trainer.skipped_steps, "history": trainer.history})
            raise
        best_epoch = trainer.load_best()
        test = trainer.evaluate(dm.test)
        metrics = {
            **{f"test_{k}": v for k, v in test.items() if k not in SCHEDULE_TERMS},
            "best_val_loss": trainer.best_val if trainer.best_epoch else math.nan,
            "best_epoch": best_epoch, "epoch": trainer.epoch, "steps": trainer.step,
            "images_per_sec": (trainer.train_images / trainer.train_time
                               if trainer.train_time else math.nan),
            "train_seconds": trainer.train_time,
            "skipped_steps": trainer.skipped_steps,
            "amp_skipped_steps": trainer.amp_skipped_steps,
            "num_params": n_params, "device": str(device),
            "precision": str(cfg.device.precision), "processes": world,
            "history": trainer.history,
        }
        if not main_rank:
            return float(metrics["test_loss"])
        write_json(run_dir / "metrics.json", metrics)
        figs = figures(model, trainer.fig_x, trainer.fig_y, len(trainer.fig_x), seed=int(cfg.seed))
        save_figures(figs, run_dir)
        tb.images({f"best_{k}": v for k, v in figs.items()}, trainer.step)
        tb.scalars("test", test, trainer.step)
        # The HPARAMS table's metric columns: the test terms and the best validation loss
        # (TensorBoard shows the first five by name: best_val_loss, test_elbo, test_kl, ...).
        tb.hparams(hparams_of(cfg), {k: v for k, v in metrics.items()
                                     if k.startswith("test_") or k == "best_val_loss"},
                   trainer.step)
    finally:
        tb.close()
    parts = ", ".join(f"{k} {test[k]:.2f}" for k in ("recon", "kl") if k in test)
    log.info("test loss %.2f nats/example (%s) with the best weights (epoch %d); %.0f img/s",
             metrics["test_loss"], parts, best_epoch, metrics["images_per_sec"])
    log.info("wrote %s", run_dir / "metrics.json")
    return float(metrics["test_loss"])


# Sweep jobs that failed: (run directory, reason), filled by SweepFailures at the sweep's end.
_FAILED: list[tuple[str, str]] = []


def _record_failure(exc: BaseException) -> float:
    """In a sweep, one failed job must not lose the others: write ``failed.json`` with the
    reason into its run directory and let the sweep go on (the objective value is NaN)."""
    import traceback

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    if not distributed.is_main():   # several processes in one job: rank 0 records it
        return math.nan
    reason = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    record = {"status": "failed", "error": reason, "overrides": list(hc.overrides.task)}
    if not isinstance(exc, UserError):
        record["traceback"] = traceback.format_exc()
    write_json(run_dir / "failed.json", record)
    log.error("error: %s (recorded in %s; the sweep goes on)", reason, run_dir / "failed.json")
    return math.nan


class SweepFailures(Callback):
    """At the end of a multirun, collect the jobs of this sweep that wrote ``failed.json``.
    It reads the files, so it works whatever launcher ran the jobs (in this process, in
    joblib workers, on a SLURM cluster)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.start = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        start = getattr(self, "start", 0.0) - 1.0
        found = [f for f in sweep_dir.rglob("failed.json") if f.stat().st_mtime >= start]
        for f in sorted(found, key=lambda f: f.stat().st_mtime):
            try:
                reason = json.loads(f.read_text()).get("error") or "unknown"
            except (OSError, ValueError):
                reason = "failed.json is unreadable"
            _FAILED.append((str(f.parent), reason.splitlines()[0]))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    from hydra.types import RunMode

    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return run(cfg)
    except UserError as e:
        if sweeping:
            return _record_failure(e)
        log.error("error: %s", e)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - a crash in one sweep job (out of memory, ...)
        if sweeping:
            return _record_failure(e)
        raise


def _join_processes(argv: list[str]) -> list[str]:
    """Started by torchrun or srun: join the process group, agree on one run directory (rank
    0's clock for Hydra's ``${now:}``), and keep ranks 1.. from writing into it."""
    if not distributed.wanted():
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise UserError("torchrun/srun run one training run over several processes; a sweep "
                        "(-m) is started once, without torchrun (see README \"Several GPUs\")")
    try:
        distributed.init()
    except (RuntimeError, ValueError) as e:
        raise UserError(f"cannot join the other processes: {str(e).splitlines()[0]}") from None
    distributed.fix_hydra_now(distributed.same_time())
    if distributed.is_main():
        return argv
    return [*argv, "hydra.output_subdir=null", "hydra/job_logging=vae_worker"]


def main() -> None:
    try:
        launchers.check(sys.argv[1:])
        sys.argv = [sys.argv[0], *_join_processes(sweep_argv(resume_argv(sys.argv[1:])))]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        _main()
    finally:
        distributed.close()


def _main() -> None:
    # Hydra rewrites <run>/.hydra/ before the run checks anything: a resume that fails (a bad
    # override, a checkpoint that does not fit) must not leave its config there.
    run_dir = next((_unquote(a.split("=", 1)[1]) for a in sys.argv
                    if a.startswith("hydra.run.dir=")), None)
    # (Also for a second process pointed at a run directory in use: it must not change it.)
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
    if _FAILED:
        print(f"error: {len(_FAILED)} sweep job(s) failed (each has a failed.json with the "
              "reason; the others finished):", file=sys.stderr)
        for run_dir, reason in _FAILED:
            print(f"  {run_dir}: {reason}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
