"""Checkpoints: written atomically, loaded with ``weights_only=True``, refused clearly."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from vae_train.errors import UserError, first_line
from vae_train.files import atomic_write

FORMAT = "vae-train-checkpoint/1"


def save_atomic(state: dict, path: str | Path) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over it, so a
    crash leaves either the old checkpoint or the new one, never half of one."""
    atomic_write(path, lambda f: torch.save(state, f))


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
    return state


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
