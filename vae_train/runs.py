"""What the commands that work on finished runs share (``evaluate``, ``sample``, ``report``):
each is a Hydra app with its own primary config (``configs/commands/<command>.yaml``), started by
:func:`hydra_app`; and loading a run directory (config, data, model, checkpoint)."""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vae_train import CONFIG_DIR, checkpoint, patches, trust
from vae_train import argv as argv_mod
from vae_train.compat import upgrade_config
from vae_train.data import DataModule
from vae_train.device import resolve_device
from vae_train.errors import UserError, first_line, unexpected

log = logging.getLogger("vae_train")


def hydra_app(config_name: str, usage: str, path_keys: tuple[str, ...] = (),
              positional: str | None = None):
    """Make ``fn(cfg)`` a command: ``main(argv=None)`` runs it as a Hydra app on
    ``configs/commands/<config_name>.yaml`` (so ``--help``, ``--cfg job``, ``hydra.verbose``
    and shell completion work as for training). Before Hydra: ``path_keys`` values are quoted;
    an unknown option or an argument that is no ``key=value`` is one line naming the options.
    Inside: ``key=`` with nothing is null; a required option left out and a
    :class:`UserError` are one line on stderr and exit status 2, Ctrl-C is status 130."""

    def decorate(fn):
        import hydra

        # The commands' own config folder: no option of theirs is taken for a training group.
        folder = str(Path(CONFIG_DIR) / "commands")
        own = OmegaConf.load(Path(folder) / f"{config_name}.yaml")
        own = OmegaConf.masked_copy(own, [k for k in own if k not in ("defaults", "hydra")])
        options = _leaf_keys(own)                          # run, k, ..., dataset.root
        required = [k for k in own if OmegaConf.is_missing(own, k)]

        @hydra.main(version_base="1.3", config_path=folder, config_name=config_name)
        def hydra_main(cfg: DictConfig):
            try:
                for key in own:                      # key= (nothing) means: not given
                    if not OmegaConf.is_missing(cfg, key) and cfg[key] == "":
                        cfg[key] = None
                missing = [k for k in required
                           if OmegaConf.is_missing(cfg, k) or cfg[k] is None]
                if missing:
                    raise UserError(f"{missing[0]}=... is required. {usage}")
                return fn(cfg)
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                sys.exit(130)
            except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback on demand
                if os.environ.get("VAE_TRAIN_TRACEBACK"):
                    raise
                print(unexpected(e, "lower batch_size/max_batch or the counts asked for",
                                 "run with VAE_TRAIN_TRACEBACK=1 to see where"), file=sys.stderr)
                sys.exit(1)

        @functools.wraps(fn)
        def main(args: list[str] | None = None):
            args = list(sys.argv[1:] if args is None else args)
            try:
                args = argv_mod.quote_paths(args, path_keys, positional)
                argv_mod.check_options(args, options, usage)
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            patches.one_line_hydra_errors()
            saved = sys.argv
            sys.argv = [saved[0], *args]
            try:
                return hydra_main()
            finally:
                sys.argv = saved

        return main

    return decorate


def _leaf_keys(node, prefix: str = "") -> list[str]:
    out = []
    for key in node:
        value = node[key] if not OmegaConf.is_missing(node, key) else None
        if isinstance(value, DictConfig):
            out += _leaf_keys(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: DictConfig
    data: DataModule
    model: torch.nn.Module
    objective: torch.nn.Module
    state: dict
    device: torch.device

    @property
    def step(self) -> int:
        return int(self.state.get("step", 0))


def load_run(run: str, which: str = "best", device: str = "auto",
             data_root: str | None = None, trust_run_code: bool = False) -> LoadedRun:
    """A trained run: its config, data (same splits), model with the chosen checkpoint's
    weights (``best``, ``last`` or a path to a .pt file), on the chosen device; ``data_root``
    replaces the data set's root (data moved since training). The run may name only
    vae-train's own classes unless ``trust_run_code`` (:mod:`vae_train.trust`)."""
    from vae_train.build import build  # the same construction as training

    run_dir = Path(run).expanduser()
    if not (run_dir / ".hydra").is_dir():
        raise UserError(f"run={run}: not a vae-train run directory (no .hydra/ folder)")
    if which in ("best", "last"):
        ckpt = run_dir / "checkpoints" / f"{which}.pt"
        if not ckpt.is_file():
            alt = run_dir / "checkpoints" / "last.pt"
            if which == "best" and alt.is_file():
                ckpt = alt
            else:
                raise UserError(f"run={run}: no checkpoint {ckpt}; train the run first "
                                "(or pick one with checkpoint=best|last|PATH)")
    else:   # a path: as given, else (relative) inside the run directory
        ckpt = Path(which).expanduser()
        if not ckpt.is_file() and not ckpt.is_absolute() and (run_dir / ckpt).is_file():
            ckpt = run_dir / ckpt
        if not ckpt.is_file():
            where = "" if ckpt.is_absolute() else f" (nor {run_dir / ckpt})"
            raise UserError(f"run={run}: no checkpoint {which}{where}; give a .pt file of the "
                            f"run (e.g. checkpoint=checkpoints/top/<file>.pt, relative to the run "
                            "directory), or checkpoint=best|last")
    state = checkpoint.load(ckpt)
    saved = run_dir / ".hydra" / "config.yaml"
    try:
        run_cfg = OmegaConf.load(saved) if saved.is_file() else None
        run_target = (OmegaConf.select(run_cfg, "model._target_", default=None)
                      if OmegaConf.is_dict(run_cfg) else None)
    except Exception as e:  # noqa: BLE001 - a damaged config.yaml: the checkpoint's config rules
        log.warning("cannot read %s (%s); using the config saved in the checkpoint", saved,
                    first_line(e))
        run_cfg = run_target = None
    if "config" not in state and not OmegaConf.is_dict(run_cfg):
        raise UserError(f"run={run}: neither {ckpt} nor {saved} holds a readable config")
    conf = state.get("config") or OmegaConf.to_container(run_cfg, resolve=False)
    if isinstance(conf, dict):   # (callbacks and loggers are built by training alone)
        conf = {k: v for k, v in conf.items() if k not in ("callbacks", "logger")}
    trust.check_config(conf, f"run {run}", trust_run_code)
    if run_target and state.get("model_target") and state["model_target"] != run_target:
        raise UserError(f"checkpoint {ckpt} holds a different model ({state['model_target']}) "
                        f"than run {run} ({run_target}); give the checkpoint's own run "
                        "directory as run=")
    # The config saved with the weights is the one that built them (a later, failed resume
    # may have rewritten .hydra/config.yaml).
    try:
        cfg = upgrade_config(OmegaConf.create(state["config"]) if "config" in state
                             else run_cfg)
    except Exception as e:  # noqa: BLE001 - keys OmegaConf refuses
        raise UserError(f"run={run}: the config in {ckpt} is damaged: {first_line(e)}") from None
    if data_root is not None:
        if "root" not in cfg.dataset:
            what = ("reads dataset.path, not a root; it cannot be moved yet: put the file back "
                    "where the run read it" if "path" in cfg.dataset else "is generated, not read")
            raise UserError(f"dataset.root= given, but {cfg.dataset.name} {what}")
        cfg.dataset.root = str(data_root)
    dev, _ = resolve_device(OmegaConf.create({"type": device, "precision": 32}))
    torch.manual_seed(int(cfg.get("seed", 0)))
    try:
        dm, objective, model = build(cfg, dev, memory="weights")
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - a config that no longer builds (edited, damaged)
        raise UserError(f"run={run}: its config does not build a model: {first_line(e)}"
                        ) from None
    checkpoint.load_model_state(model, state, ckpt)
    model.eval()
    log.info("loaded %s (epoch %s) of %s on %s", ckpt.name, state.get("epoch"), run_dir, dev)
    return LoadedRun(run_dir, cfg, dm, model, objective, state, dev)
