"""What the commands that work on a finished run share: ``key=value`` arguments, loading a
run directory (config, data, model, checkpoint), and turning errors into one line."""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vae_train import checkpoint
from vae_train.config import resolve_device
from vae_train.data import DataModule
from vae_train.errors import UserError

log = logging.getLogger("vae_train")


def parse_args(argv: list[str], defaults: dict, usage: str) -> DictConfig:
    """``key=value`` arguments over ``defaults``; unknown keys and missing values are errors."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage)
        sys.exit(0)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise UserError(f"argument {bad[0]!r} is not key=value. {usage.splitlines()[0]}")
    given = {}
    for a in argv:
        key, raw = a.split("=", 1)
        if key not in defaults:
            raise UserError(f"unknown option {key!r}; options: {', '.join(defaults)}")
        given[key] = OmegaConf.from_dotlist([f"v={raw}"]).v   # typed like Hydra's overrides
    args = OmegaConf.create({**defaults, **given})
    for key in args:
        if OmegaConf.is_missing(args, key):
            raise UserError(f"{key}=... is required. {usage.splitlines()[0]}")
    return args


def command(fn):
    """Run ``fn`` with logging to stderr; a UserError becomes one line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(argv=None):
        root = logging.getLogger()
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            return fn(sys.argv[1:] if argv is None else argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        finally:
            root.removeHandler(handler)
            root.setLevel(level)

    return wrapper


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
             data_root: str | None = None) -> LoadedRun:
    """A trained run: its config, data (same splits), model with the chosen checkpoint's
    weights (``best``, ``last`` or a path to a .pt file), on the chosen device; ``data_root``
    replaces the data set's root (data moved since training)."""
    from vae_train.train import build  # the same construction as training

    run_dir = Path(run).expanduser()
    if not (run_dir / ".hydra").is_dir():
        raise UserError(f"run={run}: not a vae-train run directory (no .hydra/ folder)")
    ckpt = Path(which) if which not in ("best", "last") else run_dir / "checkpoints" / f"{which}.pt"
    if not ckpt.is_file():
        alt = run_dir / "checkpoints" / "last.pt"
        if which == "best" and alt.is_file():
            ckpt = alt
        else:
            raise UserError(f"run={run}: no checkpoint {ckpt}; train the run first "
                            "(or pick one with checkpoint=best|last|PATH)")
    state = checkpoint.load(ckpt)
    run_target = OmegaConf.select(OmegaConf.load(run_dir / ".hydra" / "config.yaml"),
                                  "model._target_", default=None) \
        if (run_dir / ".hydra" / "config.yaml").is_file() else None
    if run_target and state.get("model_target") and state["model_target"] != run_target:
        raise UserError(f"checkpoint {ckpt} holds a different model ({state['model_target']}) "
                        f"than run {run} ({run_target}); give the checkpoint's own run "
                        "directory as run=")
    # The config saved with the weights is the one that built them (a later, failed resume
    # may have rewritten .hydra/config.yaml).
    cfg = OmegaConf.create(state["config"]) if "config" in state else \
        OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    if data_root is not None:
        if "root" not in cfg.dataset:
            raise UserError(f"dataset.root= given, but {cfg.dataset.name} is generated, not read")
        cfg.dataset.root = str(data_root)
    dev, _ = resolve_device(OmegaConf.create({"type": device, "precision": 32}))
    torch.manual_seed(int(cfg.get("seed", 0)))
    dm, objective, model = build(cfg, dev)
    checkpoint.load_model_state(model, state, ckpt)
    model.eval()
    log.info("loaded %s (epoch %s) of %s on %s", ckpt.name, state.get("epoch"), run_dir, dev)
    return LoadedRun(run_dir, cfg, dm, model, objective, state, dev)


def pick_split(run: LoadedRun, split: str):
    """A split as evaluation sees it: for dynamically binarized data the training images are
    binarized once (fixed seed), like validation and test, so the likelihood is of 0/1 pixels."""
    if split not in ("test", "val", "train"):
        raise UserError(f"split={split!r} is not known; use split=test, val or train")
    return run.data.eval_split(split)
