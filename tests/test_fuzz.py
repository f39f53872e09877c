"""The fuzzer: hostile values for the options of every config group, and damaged copies of
every kind of file vae-train reads, through the real entry points. For every generated case:
either success, or a non-zero exit with one ``error:`` line and no traceback; and a finished
run's files are never changed by a command that fails (nor its checkpoints, metrics and
config by one that reads it).

Profiles: the fast one (the default, derandomised, a few dozen cases) runs with the suite;
``VAE_FUZZ=long`` runs many more with fresh random seeds (docs/reliability.md):

    VAE_FUZZ=long VAE_FUZZ_EXAMPLES=300 python -m pytest tests/test_fuzz.py -p no:randomly

Each case that ran is counted in ``$VAE_FUZZ_LOG`` (a file) when that is set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY, compose_cfg, run_cli, write_mnist_like
from vae_train import CONFIG_DIR
from vae_train.errors import UserError

LONG = os.environ.get("VAE_FUZZ") == "long"


def examples(fast: int) -> int:
    return int(os.environ.get("VAE_FUZZ_EXAMPLES", 0)) or (fast * 25 if LONG else fast)


def profile(fast: int):
    return settings(max_examples=examples(fast), deadline=None, derandomize=not LONG,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


def count(kind: str) -> None:
    log = os.environ.get("VAE_FUZZ_LOG")
    if log:
        with open(log, "a") as f:
            f.write(kind + "\n")


def digest(folder: Path, skip=()) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"
            and not any(str(p.relative_to(folder)).startswith(s) for s in skip)}


def clean_outcome(code, text: str) -> None:
    """Success, or a non-zero exit with one error line and no traceback."""
    assert "Traceback" not in text, text[-3000:]
    assert "HYDRA_FULL_ERROR" not in text and "Error executing job" not in text, text[-3000:]
    if code in (0, None):
        return
    errors = [ln for ln in text.splitlines() if ln.startswith(("error:", "interrupted"))]
    assert len(errors) == 1, text[-3000:]


class Logging:
    """Hydra configures logging in this process: put every logger back after a case."""

    def __enter__(self):
        self.loggers = [logging.root, *(lg for lg in logging.Logger.manager.loggerDict.values()
                                        if isinstance(lg, logging.Logger))]
        self.saved = {lg: (lg.handlers[:], lg.level, lg.propagate, lg.disabled)
                      for lg in self.loggers}
        return self

    def __exit__(self, *exc):
        for lg in [logging.root, *(lg for lg in logging.Logger.manager.loggerDict.values()
                                   if isinstance(lg, logging.Logger))]:
            handlers, level, propagate, disabled = self.saved.get(
                lg, ([], logging.NOTSET, True, False))
            for h in lg.handlers:
                if h not in handlers:
                    h.close()
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled


def run_main(module: str, args: list[str], capfd, cwd: Path) -> tuple[int | None, str]:
    """``module``'s main() in this process with ``args``: (exit code, stdout + stderr)."""
    import importlib

    main = importlib.import_module(module).main
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    code = 0
    os.chdir(cwd)
    try:
        with Logging():
            if module == "vae_train.train":
                sys.argv = ["vae_train", *args]
                main()
            else:
                main(list(args))
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    out, err = capfd.readouterr()
    return code, out + err


# -- hostile values ----------------------------------------------------------------------------
HOSTILE = st.one_of(
    st.integers(-2**70, 2**70),
    st.sampled_from([0, 1, -1, 2, 2**31, 2**63 - 1, 2**63, 2**64, -2**63, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, 1e-320, 5e-324, 1e308, -1e308, 0.5, 1.5]),
    st.booleans(), st.none(),
    st.text(max_size=8),
    st.sampled_from(["", "null", "abc", "\u00e9\u00e8", "\U0001f642", "a b", "-1", "1e999",
                     "None", "[]", "{}"]),
    st.lists(st.integers(-3, 10**12), max_size=3),
    st.lists(st.text(max_size=3), min_size=1, max_size=2),
)
# Counts whose large values are a valid request for long work (train for 10^9 epochs, render
# 10^9 images), not hostile input: drawn small or of the wrong kind.
LONG_WORK = {"trainer.epochs", "dataset.num_train", "dataset.num_test", "dataset.train_size",
             "dataset.test_size", "trainer.log_every_steps", "dataset.length"}
BOUNDED = st.one_of(st.integers(-3, 3), st.sampled_from([None, "x", 1.5, math.nan, True, []]))


def literal(v) -> str:
    """A value in Hydra's override grammar."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ",".join(literal(x) for x in v) + "]"
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def leaf_keys(node, prefix: str) -> list[str]:
    from omegaconf import DictConfig, OmegaConf

    out = []
    for k in node:
        v = node[k] if not OmegaConf.is_missing(node, k) else None
        if isinstance(v, DictConfig):
            out += leaf_keys(v, f"{prefix}{k}.")
        elif k != "_target_":
            out.append(f"{prefix}{k}")
    return out


# Data sets the fuzzer can build offline and quickly (the generated ones; files below).
DATASETS = ["synthetic", "sines"]
SMALL_DATA = {"synthetic": ["dataset.num_train=160", "dataset.num_test=40",
                            "dataset.image_size=12"],
              "sines": ["dataset.num_train=160", "dataset.num_test=40", "dataset.length=16"]}
KEYS: dict[tuple[str, str, str], list[str]] = {}


def keys_of(model: str, loss: str, dataset: str) -> list[str]:
    if (model, loss, dataset) not in KEYS:
        cfg = compose_cfg([f"model={model}", f"loss={loss}", f"dataset={dataset}"])
        keys = [k for node in ("model", "loss", "dataset", "optimizer", "trainer", "device")
                for k in leaf_keys(cfg[node], f"{node}.")]
        KEYS[(model, loss, dataset)] = keys + ["seed", "overwrite", "trust_run_code"]
    return KEYS[(model, loss, dataset)]


@st.composite
def config_case(draw):
    model = draw(st.sampled_from(options("model")))
    loss = draw(st.sampled_from(options("loss")))
    dataset = draw(st.sampled_from(DATASETS))
    keys = keys_of(model, loss, dataset)
    chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=2, unique=True))
    values = {k: draw(BOUNDED if k in LONG_WORK else HOSTILE) for k in chosen}
    return model, loss, dataset, values


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run that no fuzzed command may change."""
    base = tmp_path_factory.mktemp("fuzz_finished")
    run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={base / 'sweep' / 'run'}"], base)
    return base / "sweep" / "run"


@profile(fast=12)
@given(case=config_case())
def test_fuzzed_options_succeed_or_fail_in_one_line(case, tmp_path_factory, capfd, finished):
    model, loss, dataset, values = case
    before = digest(finished)
    folder = tmp_path_factory.mktemp("cfg")
    args = [f"model={model}", f"loss={loss}", f"dataset={dataset}", *SMALL_DATA[dataset],
            "trainer.epochs=1", "trainer.batch_size=32", "trainer.num_images=4",
            "trainer.progress=false", "device=cpu",
            *(f"{k}={literal(v)}" for k, v in values.items()),
            f"hydra.run.dir={folder / 'run'}"]
    code, text = run_main("vae_train.train", args, capfd, folder)
    count("option")
    clean_outcome(code, text)
    # the same values aimed at the finished run: refused, and not a byte of it changes
    if code in (0, None):
        args[-1] = f"hydra.run.dir={finished}"
        code, text = run_main("vae_train.train", args, capfd, folder)
        assert code == 2 and "holds a finished run" in text, text[-2000:]
    assert digest(finished) == before


# -- damaged files of a run --------------------------------------------------------------------
RUN_FILES = ["checkpoints/best.pt", "checkpoints/last.pt", "metrics.json", "failed.json",
             "eval.json", ".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml",
             ".lock", "data_stats.json"]
JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers()
                    | st.text(max_size=6),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                        max_size=3),
                    max_leaves=6)


@st.composite
def damage(draw):
    kind = draw(st.sampled_from(["truncate", "flip", "random", "empty", "folder", "json",
                                 "yaml", "checkpoint"]))
    return kind, draw(st.integers(0, 2**32 - 1)), draw(JSON)


def spoil_checkpoint(path: Path, rng: np.random.Generator, value) -> None:
    """A loadable checkpoint with one field dropped, of the wrong type, or naming foreign
    code: what an edited or foreign run directory holds."""
    s = torch.load(path, weights_only=True)
    key = rng.choice(sorted(s))
    how = rng.integers(0, 4)
    if how == 0:
        del s[key]
    elif how == 1:
        s[key] = value if not isinstance(value, dict) else {"x": value}
    elif how == 2 and isinstance(s.get("config"), dict):
        s["config"]["model"]["_target_"] = rng.choice(["os.system", "builtins.eval",
                                                        "somewhere.Model"])
    else:
        s["partial_epoch"] = {"epoch": int(rng.integers(-2, 5)), "batch": int(rng.integers(-2, 99)),
                              "perm": torch.arange(int(rng.integers(0, 50))), "seconds": 0.0}
    torch.save(s, path)


def apply(path: Path, kind: str, seed: int, value) -> None:
    rng = np.random.default_rng(seed)
    if kind == "folder":
        if path.exists():
            path.unlink()
        path.mkdir(parents=True)
        return
    data = path.read_bytes() if path.is_file() else b""
    if kind == "checkpoint" and path.suffix == ".pt":
        spoil_checkpoint(path, rng, value)
        return
    if kind == "truncate":
        data = data[:int(rng.integers(0, max(1, len(data))))]
    elif kind == "flip" and data:
        b = bytearray(data)
        for i in rng.integers(0, len(b), size=int(rng.integers(1, 20))):
            b[i] ^= int(rng.integers(1, 256))
        data = bytes(b)
    elif kind == "random":
        data = rng.bytes(int(rng.integers(1, 4096)))
    elif kind == "empty":
        data = b""
    elif kind == "json":
        data = json.dumps(value).encode()
    else:   # yaml, or json for a checkpoint's place
        import yaml

        data = yaml.safe_dump(value).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


COMMANDS = {
    "evaluate": ("vae_train.evaluate", ["k=2", "n=8", "progress=false", "device=cpu"]),
    "sample": ("vae_train.sample", ["n=4", "dims=2", "steps=3", "pairs=1", "interp_steps=3",
                                    "device=cpu"]),
    "report": ("vae_train.report", []),
    "resume": ("vae_train.train", ["trainer.epochs=2", "trainer.progress=false"]),
}
# What a command writes into a run it reads (its own results, not the run's).
OUTPUTS = ("eval", "samples", "events.out", "report", "metrics.png", "rate_distortion.png")


@profile(fast=16)
@given(which=st.sampled_from(RUN_FILES), how=damage(),
       command=st.sampled_from(sorted(COMMANDS)))
def test_damaged_run_files_are_one_line_and_change_nothing(which, how, command,
                                                          tmp_path_factory, capfd, finished):
    before_finished = digest(finished)
    folder = tmp_path_factory.mktemp("files")
    run = folder / "sweep" / "run"
    shutil.copytree(finished, run)
    apply(run / which, *how)
    before = digest(run)
    module, extra = COMMANDS[command]
    if command == "report":
        args = [str(run.parent), f"out={folder / 'report'}"]
    elif command == "resume":
        args = [f"resume={run}", *extra]
    else:
        args = [f"run={run}", *extra, f"out={folder / 'pictures'}"] if command == "sample" \
            else [f"run={run}", *extra]
    code, text = run_main(module, args, capfd, folder)
    count(f"file:{which}:{how[0]}:{command}")
    clean_outcome(code, text)
    if code not in (0, None):   # (a resume that fails says so in the run's own log)
        log = ("train.log",) if command == "resume" else ()
        assert digest(run, skip=log) == {k: v for k, v in before.items() if k not in log}, \
            f"{command} failed and changed the run:\n{text[-1500:]}"
    elif command != "resume":
        after = digest(run, skip=OUTPUTS)
        assert after == {k: v for k, v in before.items() if not k.startswith(OUTPUTS)}
    assert digest(finished) == before_finished


# -- damaged data files ------------------------------------------------------------------------
def _mnist(folder: Path) -> list[Path]:
    write_mnist_like(folder, n_train=60, n_test=20, gz=False)
    return sorted(folder.glob("*-ubyte"))


def _cifar(folder: Path) -> list[Path]:
    from vae_train.data.cifar import write_cifar_batch

    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(batches / name, rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8),
                          rng.integers(0, 10, 4))
    return sorted(batches.iterdir())


def _spoil_pickle(path: Path, rng, value) -> None:
    """A CIFAR batch that unpickles, with fields of the wrong kind."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    key = [b"data", b"labels"][int(rng.integers(0, 2))]
    choice = int(rng.integers(0, 4))
    if choice == 0:
        d[key] = value
    elif choice == 1:
        d[key] = np.asarray(d[key]).astype(np.int64) * int(rng.integers(-300, 300))
    elif choice == 2:
        d.pop(key)
    else:
        d = [d]
    with open(path, "wb") as f:
        pickle.dump(d, f)


def _folder(folder: Path) -> list[Path]:
    """A folder of PNGs in two classes, read once so that its decode cache exists; the
    cache's files (the .npy and its manifest) are what gets damaged."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (folder / "images" / c).mkdir(parents=True)
        for k in range(6):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                folder / "images" / c / f"{k}.png")
    os.environ["VAE_CACHE_DIR"] = str(folder / "cache")
    _load("folder", folder)
    return sorted((folder / "cache").rglob("*.*"))


def _dsprites(folder: Path) -> list[Path]:
    from vae_train.data import dsprites

    dsprites.load_grid(folder, progress=False)
    return [dsprites.cache_path(folder)]


def _load(name: str, folder: Path):
    from omegaconf import OmegaConf

    from vae_train.build import load_image_data

    extra = {"folder": [f"dataset.path={folder / 'images'}", "dataset.test_split=0.25"],
             "dsprites": ["dataset.num_train=200", "dataset.num_test=50"]}.get(
        name, ["dataset.download=false"])
    root = [] if name == "folder" else [f"dataset.root={folder}"]
    node = compose_cfg([f"dataset={name}", *root, *extra])
    return load_image_data(OmegaConf.create(OmegaConf.to_container(node.dataset)))


# (the dSprites cache is rebuilt by rendering the whole grid, about 12 s: long profile only)
DATA = {"mnist": _mnist, "cifar10": _cifar, "folder": _folder,
        **({"dsprites": _dsprites} if LONG else {})}


@profile(fast=16)
@given(name=st.sampled_from(sorted(DATA)), pick=st.integers(0, 10), how=damage())
def test_damaged_data_files_are_refused_naming_the_file(name, pick, how, tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    cache_dir = os.environ.get("VAE_CACHE_DIR")
    try:
        _damaged_data_case(name, pick, how, folder)
    finally:
        if cache_dir is not None:
            os.environ["VAE_CACHE_DIR"] = cache_dir


def _damaged_data_case(name, pick, how, folder):
    paths = DATA[name](folder)
    target = paths[pick % len(paths)]
    kind, seed, value = how
    if kind == "checkpoint" and name == "cifar10":
        _spoil_pickle(target, np.random.default_rng(seed), value)
    else:
        apply(target, kind, seed, value)
    count(f"data:{name}:{kind}")
    try:
        data = _load(name, folder)
    except UserError as e:
        assert "\n" not in str(e).strip(), str(e)
        return
    # accepted: then it must be data that fits
    assert len(data.train_x) and data.train_x.shape[1:] == data.test_x.shape[1:]
    y = torch.as_tensor(np.asarray(data.train_y))
    assert int(y.min()) >= 0 and int(y.max()) < data.num_classes
