"""What a checkpoint holds and how a run continues from one: the model, the objective, every
group's optimizer and schedule, the gradient scaler, the counters and history, every random
state (each rank's), and for a run a signal stopped, its position inside the epoch."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vae_train import checkpoint, distributed
from vae_train.errors import UserError, first_line
from vae_train.files import atomic_copy

log = logging.getLogger(__name__)


def rng_state(shuffle: torch.Generator) -> dict:
    rng = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict, shuffle: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    shuffle.set_state(rng["shuffle"])
    if "cuda" in rng and torch.cuda.is_available():
        if len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])


def state_dict(tr) -> dict:
    """The checkpoint of trainer ``tr``. Several processes: every rank must call it (their
    random states are gathered; rank 0 writes them all)."""
    rng = rng_state(tr.shuffle_gen)
    if tr.world > 1:
        rng["ranks"] = distributed.gather(rng)
    opt = tr.optim.state_dict()
    return {
        "format": checkpoint.FORMAT,
        "model_target": tr.cfg.model._target_,
        "optimizer_targets": opt["optimizer_targets"],
        "model": tr.model.state_dict(),
        "objective": tr.objective.state_dict(),
        "optimizers": opt["optimizers"],
        "schedulers": opt["schedulers"],
        "scaler": tr.scaler.state_dict(),
        "epoch": tr.epoch,
        "step": tr.step,
        "best_val_loss": tr.best_val,
        "best_epoch": tr.best_epoch,
        "history": tr.history,
        "train_time": tr.train_time,
        "train_images": tr.train_images,
        "skipped_steps": tr.skipped_steps,
        "amp_skipped_steps": tr.amp_skipped_steps,
        "rng": rng,
        "world_size": tr.world,
        "config": OmegaConf.to_container(tr.cfg, resolve=True),
        "overrides": list(tr.overrides),
        "callbacks": callback_states(tr.callbacks),
        "stopped_early": tr.stopped_early,
    }


PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, PLAIN)


def callback_states(callbacks: list) -> dict:
    """Every callback's ``state_dict()`` by name. Checkpoints load with weights_only, so a
    state that is not plain data (numbers, strings, tensors, lists and dicts of them) would
    make every checkpoint of the run unloadable: one line naming the callback instead."""
    out = {}
    for cb in callbacks:
        if not callable(getattr(cb, "state_dict", None)):
            continue
        name = getattr(cb, "name", "") or type(cb).__name__
        state = cb.state_dict()
        if not _plain(state):
            raise UserError(f"callbacks.{name}.state_dict() returned something other than plain "
                            "data (numbers, strings, tensors, and lists and dicts of them); "
                            "checkpoints hold only such data, so nothing was written")
        out[name] = state
    return out


def save(tr, state: dict, name: str, copy_to: str | None = None) -> None:
    """Write ``checkpoints/<name>`` (rank 0 only: one writer per run directory), and the same
    bytes as ``copy_to`` if given."""
    if tr.rank == 0:
        checkpoint.save_atomic(state, tr.ckpt_dir / name)
        if copy_to:
            atomic_copy(tr.ckpt_dir / name, tr.ckpt_dir / copy_to)


def save_partial(tr, epoch: int, batch: int, perm, sums, seconds: float) -> None:
    """After a signal: ``last.pt`` with the position in the epoch (the permutation, the batch,
    every rank's running sums and random states), so a resume continues with the next batch
    exactly as if nothing had happened."""
    ranks = distributed.gather({"sums": {k: v.detach().cpu() for k, v in sums.items()},
                                "examples": tr.epoch_examples})
    state = state_dict(tr)
    state["partial_epoch"] = {"epoch": epoch, "batch": batch, "perm": perm.cpu(),
                              "world": tr.world, "ranks": ranks, "seconds": seconds,
                              "global_batch": tr.global_batch}
    save(tr, state, "last.pt")


# Data-set keys that say where or how the data are read, not which data, and the statistics a
# run computes from its data (stats): a change is no news.
STORAGE_KEYS = frozenset({"_target_", "root", "download", "in_memory", "memory_share", "cache",
                          "cache_dir", "workers", "stats"})


# What resume needs beyond what every checkpoint holds.
RESUME_FIELDS = ("epoch", "step", "best_val_loss", "best_epoch", "history", "train_time",
                 "train_images", "rng")


def restore(tr, path: Path) -> None:
    """Continue trainer ``tr`` from a checkpoint; optimizer settings of the current config
    apply on top. A checkpoint without what resume needs, or whose states do not load, is one
    line naming it."""
    state = checkpoint.load(path)
    missing = [k for k in RESUME_FIELDS if k not in state]
    if missing:
        raise UserError(f"checkpoint {path} cannot be resumed: it has no {', '.join(missing)} "
                        "(it holds weights only; evaluate and sample can use it)")
    try:
        _restore(tr, path, state)
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} cannot be resumed: {first_line(e)}") from None


def _restore(tr, path: Path, state: dict) -> None:
    checkpoint.load_model_state(tr.model, state, path)
    tr.objective.load_state_dict(state.get("objective", {}))
    old_data = state.get("config", {}).get("dataset")
    new_data = OmegaConf.to_container(tr.cfg.dataset, resolve=True)
    changed = []
    if isinstance(old_data, dict) and old_data != new_data:
        changed = sorted(k for k in set(old_data) | set(new_data)
                         if old_data.get(k) != new_data.get(k) and k not in STORAGE_KEYS)
        if changed:
            log.warning("resuming with other data settings than the checkpoint's (dataset.%s); "
                        "best_val_loss was measured on the old validation split",
                        ", dataset.".join(changed))
    tr.optim.load_state_dict(state, path)
    if tr.scaler.is_enabled() and state.get("scaler"):
        tr.scaler.load_state_dict(state["scaler"])
    tr.epoch, tr.step = int(state["epoch"]), int(state["step"])
    tr.best_val, tr.best_epoch = float(state["best_val_loss"]), int(state["best_epoch"])
    tr.history = list(state["history"])
    tr.train_time, tr.train_images = float(state["train_time"]), int(state["train_images"])
    tr.skipped_steps = int(state.get("skipped_steps", 0))
    tr.amp_skipped_steps = int(state.get("amp_skipped_steps", 0))
    tr.partial = state.get("partial_epoch")
    tr.stopped_early = state.get("stopped_early")
    saved_callbacks = state.get("callbacks") or {}
    for cb in tr.callbacks:
        name = getattr(cb, "name", type(cb).__name__)
        if name in saved_callbacks and callable(getattr(cb, "load_state_dict", None)):
            cb.load_state_dict(saved_callbacks[name])
    if tr.partial is not None:
        why = _cannot_continue(tr, tr.partial, state, changed)
        if why:
            log.warning("epoch %d stopped after batch %d; it cannot continue where it stopped "
                        "(%s), so it restarts from its beginning (its steps so far stay in the "
                        "weights)", int(tr.partial["epoch"]), int(tr.partial["batch"]), why)
            tr.partial = None
    saved_world = int(state.get("world_size", 1))
    ranks = state["rng"].get("ranks") or [state["rng"]]
    if saved_world == tr.world:
        set_rng_state(ranks[tr.rank], tr.shuffle_gen)
    else:   # another number of processes: the same data order, fresh noise per rank
        set_rng_state(state["rng"], tr.shuffle_gen)
        if tr.rank:
            distributed.seed_rank(int(tr.cfg.seed) + tr.epoch)
        log.warning("resuming with %d process(es), the checkpoint was written by %d: the run "
                    "continues, but not bit for bit as with %d", tr.world, saved_world,
                    saved_world)
        if tr.partial is not None:
            log.warning("the epoch that a signal stopped restarts from its beginning (its "
                        "position is counted in batches of %d processes)", saved_world)
            tr.partial = None
    log.info("resumed from %s at epoch %d, step %d", path, tr.epoch, tr.step)


def _cannot_continue(tr, partial: dict, state: dict, data_changed: list[str]) -> str:
    """Why the rest of a stopped epoch cannot be trained as it would have been ('' if it
    can): its order of examples is a permutation of the old training set in batches of the
    old size."""
    n_then, n_now = len(partial["perm"]), len(tr.data.train)
    if n_then != n_now:
        return f"the training set has {n_now} examples now, {n_then} then"
    saved_cfg = state.get("config") or {}
    then = partial.get("global_batch")
    if then is None:   # (a checkpoint of an earlier 0.2)
        try:
            then = int(saved_cfg["trainer"]["batch_size"]) * int(partial.get("world", 1))
        except (KeyError, TypeError, ValueError):
            then = None
    if then is not None and int(then) != tr.global_batch:
        return (f"{int(then)} examples per step then, {tr.global_batch} now "
                "(trainer.batch_size changed)")
    if data_changed:
        return "the data settings changed: dataset." + ", dataset.".join(data_changed)
    if int(partial["batch"]) > tr.steps_per_epoch:
        return f"it stopped after batch {int(partial['batch'])} of {tr.steps_per_epoch}"
    return ""


def load_best(tr) -> int:
    """Put the best checkpoint's weights in the model; returns its epoch (0: untrained)."""
    distributed.barrier()   # several processes: rank 0 has finished writing it
    best = tr.ckpt_dir / "best.pt"
    if not best.is_file():
        return tr.epoch
    state = checkpoint.load(best)
    checkpoint.load_model_state(tr.model, state, best)
    return int(state["epoch"])
