"""Checkpoints: written atomically, loaded with ``weights_only=True``, refused clearly."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from vae_train.errors import UserError, first_line
from vae_train.files import serialize, write_bytes

FORMAT = "vae-train-checkpoint/1"


def save_atomic(state: dict, path: str | Path) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over it, so a
    crash leaves either the old checkpoint or the new one, never half of one. It is serialised
    in memory first, so a disk without room for it is refused before anything is written
    (:func:`vae_train.files.write_bytes`)."""
    write_bytes(path, serialize(torch.save, state))


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):   # torch.save writes a zip archive
        raise UserError(f"checkpoint {path} is truncated or corrupt: not a PyTorch zip archive")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it names {found.group(1)}" if found else "it is not a plain tensor file"
        raise UserError(f"checkpoint {path} was refused: it holds objects other than tensors and "
                        f"containers, so loading it could run code ({what})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(f"checkpoint {path} is truncated or corrupt: {first_line(e)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a vae-train checkpoint (no '{FORMAT}' marker)")
    check_fields(state, path)
    return state


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _tensors(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                       for k, t in v.items())


# What each field of a checkpoint must be, where it is present ("model" must be).
FIELDS = {
    "model": (_tensors, "a dict of tensors"),
    "objective": (_tensors, "a dict of tensors"),
    "config": (lambda v: isinstance(v, dict), "a dict"),
    "model_target": (lambda v: isinstance(v, str), "a string"),
    "overrides": (lambda v: isinstance(v, list) and all(isinstance(o, str) for o in v),
                  "a list of strings"),
    "epoch": (_int, "an integer >= 0"), "step": (_int, "an integer >= 0"),
    "best_epoch": (_int, "an integer >= 0"), "train_images": (_int, "an integer >= 0"),
    "best_val_loss": (lambda v: isinstance(v, (int, float)), "a number"),
    "train_time": (lambda v: isinstance(v, (int, float)), "a number"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
                "a list of dicts"),
    "rng": (lambda v: isinstance(v, dict) and isinstance(v.get("torch"), torch.Tensor),
            "a dict of random states"),
    "optimizers": (lambda v: isinstance(v, dict), "a dict"),
    "schedulers": (lambda v: isinstance(v, dict), "a dict"),
    "partial_epoch": (lambda v: v is None or (
        isinstance(v, dict) and _int(v.get("epoch")) and _int(v.get("batch"))
        and isinstance(v.get("perm"), torch.Tensor) and v["perm"].dim() == 1), "a position"),
}


def check_fields(state: dict, path) -> None:
    """A checkpoint whose fields are not what vae-train writes (edited, or from elsewhere) is
    one line naming the field, not an error deep inside resume."""
    if "model" not in state:
        raise UserError(f"checkpoint {path} has no model weights; it is not a complete "
                        "vae-train checkpoint")
    for key, (ok, what) in FIELDS.items():
        if key in state and not ok(state[key]):
            raise UserError(f"checkpoint {path} is damaged: its field {key!r} is not {what}")


def load_model_state(model: torch.nn.Module, state: dict, path) -> None:
    """Load weights, naming the first mismatch instead of printing every key."""
    theirs, ours = state["model"], model.state_dict()
    what = state.get("model_target", "?")
    missing = [k for k in ours if k not in theirs]
    extra = [k for k in theirs if k not in ours]
    if missing or extra:
        raise UserError(
            f"checkpoint {path} holds a different model ({what}): "
            f"{len(missing)} parameters missing (e.g. {missing[:1]}), {len(extra)} unexpected "
            f"(e.g. {extra[:1]}); use the model config the checkpoint was trained with")
    for k, v in ours.items():
        if theirs[k].shape != v.shape:
            raise UserError(
                f"checkpoint {path} does not fit this model: {k} has shape "
                f"{tuple(theirs[k].shape)} in the checkpoint but {tuple(v.shape)} here "
                "(was model.latent_dim, a hidden size or the data set different?)")
    model.load_state_dict(theirs)
