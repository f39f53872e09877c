"""Data-parallel training over several processes (``torchrun --nproc_per_node=N -m vae_train``).

torchrun starts N copies of the command with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` set; ``srun`` (SLURM, also under the submitit launcher
with ``tasks_per_node`` > 1) sets ``SLURM_PROCID``, ``SLURM_LOCALID`` and
``SLURM_STEP_NUM_TASKS`` for each task of a job step instead, which are read when torchrun's
are absent (not ``SLURM_NTASKS``: a batch script or an ``salloc`` shell has that too, with one
process).
The processes form one PyTorch process group (gloo for CPU tensors, NCCL for CUDA ones) and
train one run: the model is wrapped in ``DistributedDataParallel`` (gradients are averaged by
PyTorch's engine), every rank takes its share of each batch, and rank 0 alone writes the run
directory (config, log, TensorBoard events, checkpoints, metrics). Everything here is a no-op
in a single process.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from contextlib import contextmanager

import torch
import torch.distributed as dist

from vae_train.errors import UserError


def _env_world() -> tuple[int, int, int] | None:
    """(rank, local rank, world size) from torchrun's or SLURM's variables; None: one process."""
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        world, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        local = int(env.get("LOCAL_RANK", rank))
    elif int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in env:
        world, rank = int(env["SLURM_STEP_NUM_TASKS"]), int(env["SLURM_PROCID"])
        local = int(env.get("SLURM_LOCALID", "0"))
    else:
        return None
    return (rank, local, world) if world > 1 else None


def slurm_master(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[07-09,12],cpu3`` -> ``gpu07``."""
    first = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if first is None:
        raise UserError(f"SLURM_JOB_NODELIST={nodelist!r} cannot be read; set MASTER_ADDR")
    prefix, ranges = first.group(1), first.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    found = _env_world()
    return found[1] if found else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def wanted() -> bool:
    """Whether this process was started as one of several (torchrun, srun)."""
    return _env_world() is not None


def init() -> bool:
    """Join the process group when started by torchrun or srun (idempotent); returns whether
    this process is one of several."""
    found = _env_world()
    if found is None:
        return False
    if is_initialized():
        return True
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed; run one process")
    r, _, world = found
    os.environ.setdefault("RANK", str(r))
    os.environ.setdefault("WORLD_SIZE", str(world))
    if "MASTER_ADDR" not in os.environ:   # srun without torchrun: the job's first host
        os.environ["MASTER_ADDR"] = slurm_master(os.environ.get(
            "SLURM_STEP_NODELIST", os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")))
    if "MASTER_PORT" not in os.environ:   # one port per job, so that two jobs on a node differ
        os.environ["MASTER_PORT"] = str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000)
    # gloo carries CPU tensors (and the small agreement messages), NCCL the CUDA gradients
    backend = "cpu:gloo,cuda:nccl" if (torch.cuda.is_available()
                                      and dist.is_nccl_available()) else "gloo"
    dist.init_process_group(backend=backend, timeout=_dt.timedelta(minutes=30))
    return True


def close() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def same_time() -> float:
    """Rank 0's clock, on every rank: Hydra's ``${now:...}`` run directory must be one name."""
    import time

    t = torch.tensor([time.time()], dtype=torch.float64)
    if is_initialized():
        dist.broadcast(t, 0)
    return float(t)


def any_true(*flags: bool) -> list[bool]:
    """Each flag OR-ed over the ranks (one small message); the flags as given in one process."""
    if not is_initialized():
        return [bool(f) for f in flags]
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def sum_dict(sums: dict[str, torch.Tensor], count: float) -> tuple[dict[str, torch.Tensor], float]:
    """Sum every rank's running sums (the same keys in the same order on every rank: the same
    code made them) and example counts."""
    if not is_initialized():
        return sums, count
    keys = list(sums)
    device = next(iter(sums.values())).device if sums else torch.device("cpu")
    packed = torch.stack([sums[k].float().reshape(()) for k in keys]
                         + [torch.tensor(float(count), device=device)]).double()
    dist.all_reduce(packed)
    return {k: packed[i].float() for i, k in enumerate(keys)}, float(packed[-1])


def gather(obj) -> list:
    """Every rank's ``obj`` (pickled), in rank order; ``[obj]`` in one process."""
    if not is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


@contextmanager
def rank0_first():
    """Rank 0 runs the block first (a download, a cache it writes), then the others."""
    if is_initialized() and not is_main():
        dist.barrier()
    try:
        yield
    finally:
        if is_initialized() and is_main():
            dist.barrier()


def seed_rank(seed: int) -> None:
    """Ranks 1..: a random stream of their own (noise, dynamic binarization); rank 0 keeps
    the one it has, so that one process and rank 0 draw alike."""
    if rank():
        torch.manual_seed(seed * 1000 + rank())


def shard(n: int) -> tuple[int, int]:
    """This rank's [start, stop) of ``n`` items split into near-equal contiguous parts."""
    r, world = rank(), world_size()
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def check_split_sizes(**sizes: int) -> None:
    """Every process needs at least one example of every split."""
    world = world_size()
    for split, size in sizes.items():
        if size < world:
            raise UserError(f"the {split} split has {size} examples, fewer than the {world} "
                            "processes; use fewer processes or more data")


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Optimizer steps in an epoch of ``n`` examples taken ``global_batch`` at a time (a last
    batch too small to give every process one example is dropped)."""
    steps = -(-n // global_batch)
    if 0 < n % global_batch < world_size():
        steps -= 1
    return steps


def place(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:<local rank>`` on a GPU node, the CPU as it is."""
    if not is_initialized():
        return device
    if device.type == "cuda":
        index = local_rank() % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if device.type == "mps":
        raise UserError("device=mps cannot train data-parallel over several processes; run one "
                        "process, or use device=cpu")
    return device


def command() -> str:
    """How to start this run again: ``python -m vae_train``, or torchrun with as many processes."""
    if not is_initialized():
        return "python -m vae_train"
    return f"torchrun --nproc_per_node={world_size()} -m vae_train"


def quiet_worker_logging() -> None:
    """Ranks 1..: no log file (rank 0 writes ``train.log``), warnings only on the console,
    tagged with the rank. main() arranges this through Hydra for torchrun; a job that the
    submitit launcher started as several SLURM tasks gets it here."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
        else:
            handler.setFormatter(logging.Formatter(f"[rank {rank()}] %(message)s"))
    root.setLevel(logging.WARNING)
