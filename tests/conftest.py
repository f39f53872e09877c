"""Shared helpers: run the real command line in a subprocess, compose configs in-process,
and write small data sets in the real on-disk formats."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from vae_train.data.idx import write_idx
from vae_train.train import CONFIG_DIR

# A small, fast synthetic set for command-line runs.
TINY = ["dataset=synthetic", "dataset.num_train=1200", "dataset.num_test=300",
        "trainer.batch_size=64", "trainer.progress=false", "device=cpu"]


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Decode caches (dataset=folder, celeba) go to a temporary folder, never ~/.cache."""
    os.environ["VAE_CACHE_DIR"] = str(tmp_path_factory.mktemp("vae_cache"))


@pytest.fixture(autouse=True)
def restore_logging():
    """Hydra configures logging in this process (handlers on pytest's captured streams; a
    command's logging config may disable the loggers that exist):
    put every logger back as it was (the handlers a test added go, none is put back), so
    later tests do not log into closed files and see the records of loggers that exist."""
    loggers = [logging.root, *(lg for lg in logging.Logger.manager.loggerDict.values()
                               if isinstance(lg, logging.Logger))]
    saved = {lg: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers}
    yield
    for lg in [logging.root, *(lg for lg in logging.Logger.manager.loggerDict.values()
                               if isinstance(lg, logging.Logger))]:
        handlers, level, propagate, disabled = saved.get(lg, ([], logging.NOTSET, True, False))
        lg.handlers[:] = [h for h in lg.handlers if h in handlers]
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled


def run_cli(args, cwd, check=True, env=None, timeout=300):
    """``python -m vae_train ARGS`` in ``cwd``; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "vae_train", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    return proc


def compose_cfg(overrides=()):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_trainer(overrides, folder):
    """A CPU Trainer (no TensorBoard) for a composed config, its weights seeded with 0."""
    import torch

    from vae_train.logging import TBLogger
    from vae_train.build import build
    from vae_train.training.trainer import Trainer

    cfg = compose_cfg(overrides)
    torch.manual_seed(0)
    dm, objective, model = build(cfg, torch.device("cpu"))
    return Trainer(cfg, model, objective, dm, torch.device("cpu"), None, folder,
                   TBLogger(folder, enabled=False))


@pytest.fixture
def cfg_factory():
    return compose_cfg


def write_mnist_like(folder: Path, n_train: int = 300, n_test: int = 100, gz: bool = True,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write the four IDX files of an MNIST-like set: bright squares whose size is the label."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, lab in enumerate(labels):
            r, c = rng.integers(2, 10, 2)
            images[i, r:r + 8 + lab, c:c + 8 + lab] = 255
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)
        out[split] = (images, labels)
    return out


def run_module(module, args, cwd, check=True):
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


class Result:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


@pytest.fixture
def call(capsys):
    """Run a command's main() in this process (no interpreter start-up), like the CLI."""

    def _call(module, args, cwd=None, check=True):
        main = importlib.import_module(module).main
        code = 0
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code
        captured = capsys.readouterr()
        if check and code != 0:
            raise AssertionError(f"exit {code}\n{captured.out}\n{captured.err}")
        return Result(code, captured.out, captured.err)

    return _call
