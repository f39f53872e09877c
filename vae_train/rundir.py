"""What may be done to a run directory that already holds results.

A run directory with results (checkpoints, ``metrics.json``, ``failed.json``, ``eval*.json``)
is never trained over from scratch unless the user asks for it with ``overwrite=true``; then
every result of the old run goes (checkpoints, metrics, evaluations, pictures, TensorBoard
events), so nothing left behind describes another model. ``resume=`` continues the run that is
there, and only with a checkpoint that belongs to it: one whose model is the run's.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from vae_train.errors import UserError

log = logging.getLogger(__name__)


class RunDirRefused(UserError):
    """The run directory holds another run's results (nothing in it was changed)."""


def results(run_dir: str | Path, everything: bool = False) -> list[Path]:
    """The files of ``run_dir`` that hold a run's results (checkpoints, metrics, failure
    record, evaluations); ``everything``: with what goes with them (pictures, TensorBoard
    events, the data statistics)."""
    run_dir = Path(run_dir)
    found = [*sorted((run_dir / "checkpoints").rglob("*.pt"))]   # (and top/: callbacks=top_k)
    patterns = ["metrics.json", "failed.json", "eval*.json"]
    if everything:
        patterns += ["data_stats.json", "*.png", "events.out.tfevents.*", "samples",
                     "eval*.json.stale", "profile", "metrics.csv", "hparams.yaml",
                     "loggers.json", "wandb"]
    for pattern in patterns:
        found += sorted(run_dir.glob(pattern))
    return found


def _describe(found: list[Path], run_dir: Path) -> str:
    names = [str(p.relative_to(run_dir)) for p in found]
    finished = "metrics.json" in names
    what = "a finished run" if finished else "another run's results"
    shown = ", ".join(n for n in names if n.startswith(("checkpoints", "metrics", "failed",
                                                        "eval")))
    return f"{what} ({shown})"


def refuse_fresh_start(run_dir: str | Path, overwrite: bool) -> None:
    """Before a run starts from scratch in ``run_dir``: refuse (one line) if results are there,
    or with ``overwrite`` remove them."""
    run_dir = Path(run_dir)
    if not results(run_dir):
        return
    found = results(run_dir, everything=True)
    if not overwrite:
        raise RunDirRefused(
            f"run directory {run_dir} holds {_describe(found, run_dir)}; nothing was changed. "
            f"Continue it with resume={run_dir}, train elsewhere (another hydra.run.dir), or "
            "replace its results with overwrite=true")
    log.warning("overwrite=true: removing the results of the run that was in %s (%s)", run_dir,
                ", ".join(str(p.relative_to(run_dir)) for p in found))
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


# Files a training run writes (relative to its run directory).
WRITTEN = ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.json", "data_stats.json",
           "checkpoints")


def check_targets(run_dir: str | Path) -> None:
    """Refuse, before anything is trained, a run directory where a file the run writes is
    a folder (or a folder it writes into is a file): the run would fail at its first save."""
    run_dir = Path(run_dir)
    for name in WRITTEN:
        p = run_dir / name
        folder = name == "checkpoints"
        if p.exists() and (p.is_dir() != folder or (not folder and not p.is_file())):
            kind = "a file" if folder else "a folder" if p.is_dir() else "not a regular file"
            raise UserError(f"{p} is {kind}, where the run writes its {name}; move it away "
                            "and run the command again")


def set_evaluations_aside(run_dir: str | Path) -> None:
    """A resumed run that trains on: its ``eval*.json`` describe earlier weights; they become
    ``eval*.json.stale`` (kept, not read by ``report``)."""
    for p in sorted(Path(run_dir).glob("eval*.json")):
        p.replace(p.with_name(p.name + ".stale"))
        log.warning("%s described the weights before this resume; it is now %s (run "
                    "python -m vae_train.evaluate again)", p.name, p.name + ".stale")


def _node(cfg, key: str):
    """``cfg[key]`` as plain data, interpolations resolved where they can be."""
    node = OmegaConf.select(cfg, key, default=None)
    if not OmegaConf.is_config(node):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation that needs Hydra: compare as written
        return OmegaConf.to_container(node, resolve=False)


def check_checkpoint_belongs(run_dir: Path, ckpt: Path, state: dict) -> None:
    """A checkpoint resumed inside ``run_dir`` must hold the run's model: its saved model node
    must agree with the run's ``.hydra/config.yaml`` on every key both have (a newer version
    may add keys). A copy of another run's checkpoint is refused before anything changes."""
    saved = run_dir / ".hydra" / "config.yaml"
    theirs = state.get("config")
    if not saved.is_file() or not isinstance(theirs, dict) or \
            not isinstance(theirs.get("model"), dict):
        return
    try:
        ours = _node(OmegaConf.load(saved), "model")
    except Exception as e:  # noqa: BLE001 - a broken config.yaml: the checkpoint's rules
        log.warning("cannot read %s (%s); resuming from the checkpoint's own config", saved,
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
        return
    if not isinstance(ours, dict):
        return
    model = theirs["model"]
    differ = [k for k in sorted(set(ours) & set(model)) if ours[k] != model[k]]
    if differ:
        k = "_target_" if "_target_" in differ else differ[0]
        raise RunDirRefused(
            f"checkpoint {ckpt} was not written by run {run_dir}: its model.{k} is "
            f"{model[k]!r}, the run's is {ours[k]!r}; nothing was changed. Resume the run's "
            "own checkpoint, or continue this one in a new run directory (copy it out of "
            "the run and resume=<the copy>)")
