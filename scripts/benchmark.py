#!/usr/bin/env python
"""Training speed of every model family: vae-train vs a bare loop (and the classic example).

Every family (``configs/model/*.yaml``, and a model of your own found through
``--override hydra.searchpath=[file://DIR]``) trains on Fashion-MNIST at its config's defaults
(batch 128, Adam 1e-3) on one device, at each precision asked for, in one run on this machine.
Rows, for each family and precision:

* ``vae-train`` - the real command line, ``python -m vae_train model=<m> dataset=fashion_mnist
                  trainer.progress=false ...`` in a subprocess with its run directory in a
                  temporary folder (validation pass, checkpoints, TensorBoard and pictures
                  included); its train images per second and seconds come from the run's
                  ``metrics.json``. On a CPU ``dataset.train_size`` cuts the epoch of the
                  families whose step costs most (``--train-size``, or by default as many
                  images as an epoch of ``EPOCH_FLOPS`` training FLOPs holds); a tenth of it
                  is validation;
* ``bare``      - the floor: the same model, objective and optimizer(s), built by
                  ``vae_train.build.build`` from the same composed config (so the same training
                  images and batch), trained by a hand-written loop over the images pre-loaded
                  as one float tensor on the device: no checks, no logging, no progress bar,
                  no validation. A multi-phase model (aae: autoencoder, discriminator,
                  generator) steps each phase's optimizer in order on every batch, as the
                  trainer does; a multi-stage model (vqvae: autoencoder, then its PixelCNN
                  prior) runs its stages one after the other, each for ``--epochs`` epochs
                  (a stage's length is the model option ``<stage>_epochs``), and gets one row
                  per stage;
* ``ratio``     - vae-train img/s over bare img/s (1.00: the trainer costs nothing).

A model of videos (``model=video_vae``) trains on ``dataset=moving_mnist`` generated from the
same Fashion-MNIST files (``VIDEO_SEQUENCES`` sequences of 20 frames of 64 x 64, or
``--train-size``); its "images" are sequences (img/s counts sequences per second).

and for the classic 784-400-20 MLP VAE (``model=vae``, summed BCE) also:

* ``classic``   - written the way the PyTorch example does it: torchvision's dataset with
                  ``ToTensor`` and a shuffling ``DataLoader``; each epoch trains on 60,000
                  images, then computes the test loss on 10,000; ``x classic`` is vae-train's
                  img/s over this row's.

Each row also has the device's *measured* matrix throughput (``matmul peak``: an n x n x n
product timed at the row's precision, n = 2048 on the CPU (as a BLAS matmul and as a oneDNN
1x1 convolution, the better of the two) and 8192 on a GPU; fp16 only on a GPU), the training
FLOPs per image (forward and backward of one step of every phase, counted by
``torch.utils.flop_counter.FlopCounterMode`` on a CPU build of the config, divided by the
batch: matrix products and convolutions only, the optimizer not included) and the fraction of
that peak the row reaches (``%peak``): vae-train img/s x FLOPs/img / peak.

``--compile`` passes ``device.compile=true`` to vae-train and compiles the bare loop's loss the same way: the model and objective together
(``torch.compile`` of the networks alone gains nothing on the CPU: the matrix products are
library calls either way, the gain is the loss's fused pointwise work). A schedule that is a
Python function of the step (gumbel_vae's temperature) recompiles every step until Dynamo's
limit, then runs eager: ``bare_compiled_graphs`` in the JSON counts the graphs. Conv models
use channels-last where vae-train does (``device.channels_last``; auto: on CUDA).

**Repetitions.** Every row runs ``--reps`` times (default 3), interleaved: in each repetition
the classic example, then each family's bare loop and vae-train run (bare first in even
repetitions, vae-train first in odd ones, the families' order reversed every other
repetition). A ratio (vae-train / bare, x classic) is taken within one repetition, so that both
sides share the same minute of a shared machine, and reported as the median over the
repetitions with its range (min..max); img/s columns are medians. One pass on this machine
gave the MLP VAE 0.68 of its bare loop and the next 0.92: a single ratio is one noisy sample.

The first epoch of each stage includes warm-up (and compilation): with two or more epochs the
later ones are averaged. ``s/epoch`` is the training time of a full 54,000-image epoch at the
vae-train rate. Results print as a table and are written as JSON (device, threads, torch,
processor/GPU name, date, the command, the load average before and after). On a shared CPU
the numbers move by 10-20%; with another process busy on one of two cores, two OpenMP
threads can run several times slower than one (``--threads 1``): the table says so when the
load average was above the number of cores.

``--data`` (first) measures the data paths of a folder of images instead: decode throughput
per core, the decode cache's first and second start, and the memory-mapped path against the
in-memory path for the conv VAE (``scripts/benchmark_data.py``, whose options follow it).

Usage:  python scripts/benchmark.py [--models vae conv_vae ...] [--epochs 3] [--reps 3]
            [--device cpu|cuda|auto] [--precision 32 bf16 16] [--compile] [--train-size N]
            [--threads N] [--no-classic] [--no-cli] [--peak-size N] [--data-root DIR]
            [--dataset NAME] [--override KEY=VALUE ...] [--out outputs/benchmark.json]
        python scripts/benchmark.py --data [benchmark_data.py's options]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte"]
FULL_EPOCH = 54000   # training images of a full Fashion-MNIST epoch (val_size 0.1)
# On a CPU, a family whose training step costs more than this many FLOPs per full epoch (of
# its costliest stage) trains on fewer images (dataset.train_size), so that the default run
# (3 epochs, every family, fp32 plus bf16 for vae) takes about 10-15 minutes on a 2-core CPU;
# 1.4 TFLOP is a full epoch of conv_vae. On a GPU every family uses all the images.
EPOCH_FLOPS = 1.4e12
# A model of videos (model=video_vae) trains on this many moving_mnist sequences of
# Fashion-MNIST (each 20 frames of 64 x 64) unless --train-size says otherwise.
VIDEO_SEQUENCES = 1000
PEAK_DTYPE = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}


# -- data ------------------------------------------------------------------------------------
def find_raw(root: Path | None) -> Path:
    for d in ([root / "FashionMNIST" / "raw", root] if root else []) + [DEBIAN]:
        if all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in FILES):
            return d
    sys.exit("Fashion-MNIST not found: apt-get install dataset-fashion-mnist, or --data-root")


def torchvision_root(raw: Path, tmp: Path) -> Path:
    """torchvision's FashionMNIST(download=False) wants the unpacked files in <root>/FashionMNIST/raw."""
    dest = tmp / "FashionMNIST" / "raw"
    dest.mkdir(parents=True)
    for f in FILES:
        if (raw / f).is_file():
            shutil.copy(raw / f, dest / f)
        else:
            (dest / f).write_bytes(gzip.decompress((raw / f"{f}.gz").read_bytes()))
    return tmp


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the classic example ------------------------------------------------------------------
class ClassicVAE(nn.Module):
    """The example's network: 784-400-(20, 20) encoder, 20-400-784 decoder with a sigmoid."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def classic_loss(recon, x, mu, logvar):
    bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def run_classic(root: Path, epochs: int, device: torch.device) -> dict:
    from torchvision import datasets, transforms

    torch.manual_seed(1)
    kw = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    train = torch.utils.data.DataLoader(
        datasets.FashionMNIST(str(root), train=True, download=False,
                              transform=transforms.ToTensor()), batch_size=128, shuffle=True, **kw)
    test = torch.utils.data.DataLoader(
        datasets.FashionMNIST(str(root), train=False, download=False,
                              transform=transforms.ToTensor()), batch_size=128, shuffle=False, **kw)
    model = ClassicVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    epochs_out = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for x, _ in train:
            x = x.to(device)
            opt.zero_grad()
            recon, mu, logvar = model(x)
            loss = classic_loss(recon, x, mu, logvar)
            loss.backward()
            opt.step()
        sync(device)
        t1 = time.perf_counter()
        model.eval()
        total = 0.0
        with torch.no_grad():
            for x, _ in test:
                x = x.to(device)
                recon, mu, logvar = model(x)
                total += classic_loss(recon, x, mu, logvar).item()
        t2 = time.perf_counter()
        epochs_out.append({"train_seconds": t1 - t0, "epoch_seconds": t2 - t0,
                           "train_images": len(train.dataset)})
    return {"stages": {"train": epochs_out}, "test_loss": total / len(test.dataset)}


# -- configs and the models as the trainer builds them ----------------------------------------
def families() -> list[str]:
    """Every model option vae-train ships (configs/model/*.yaml)."""
    from vae_train.train import CONFIG_DIR

    return sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))


def is_video_family(model: str, extra=()) -> bool:
    """Whether the model option is a model of videos (``VideoModel``, model=video_vae)."""
    from vae_train.checks import locate
    from vae_train.models.base import VideoModel

    search = [o for o in extra if o.startswith("hydra.")]     # where a model of yours is
    try:
        cls = locate(str(compose([*search, f"model={model}"]).model._target_))
    except Exception:  # noqa: BLE001 - not a model this script can inspect: an image model
        return False
    return isinstance(cls, type) and issubclass(cls, VideoModel)


def overrides(model: str, root: Path | None, epochs: int, device: str, precision: str,
              train_size: int | None, extra=(), dataset: str = "fashion_mnist") -> list[str]:
    """The command-line overrides of one family's run (shared by both rows): Fashion-MNIST
    from ``root``, or another data set as its config has it. A model of videos trains on
    moving_mnist generated from the same Fashion-MNIST files: ``VIDEO_SEQUENCES`` training
    sequences (or ``train_size``) of the config's frames, a tenth of that for the test."""
    data = (["dataset=fashion_mnist", f"dataset.root={root}", "dataset.download=false"]
            if dataset == "fashion_mnist" else [f"dataset={dataset}"])
    if dataset == "fashion_mnist" and is_video_family(model, extra):
        n = train_size or VIDEO_SEQUENCES
        data = ["dataset=moving_mnist", "dataset.source=fashion_mnist", f"dataset.root={root}",
                f"dataset.num_train={n}", f"dataset.num_test={max(1, n // 10)}"]
    out = [*extra, f"model={model}", *data, f"trainer.epochs={epochs}", f"device={device}",
           f"device.precision={precision}"]
    if train_size:
        out.append(f"dataset.train_size={train_size}")
    return out


def stage_lengths(cfg, stages, epochs: int) -> list[str]:
    """Overrides that give every later stage ``epochs`` epochs too: a stage's length is the
    model option ``<stage>_epochs`` (vae_train.models.base.Stage)."""
    return [f"model.{s.name}_epochs={epochs}" for s in stages[1:]
            if f"{s.name}_epochs" in cfg.model]


def default_train_size(flops: dict, device: torch.device) -> int | None:
    """dataset.train_size for a family on this device: all images on a GPU; on a CPU as many
    as ``EPOCH_FLOPS`` of its costliest stage hold (None: all of them fit)."""
    worst = max(flops.values(), default=0)
    if device.type != "cpu" or not worst or worst * FULL_EPOCH <= EPOCH_FLOPS:
        return None
    return max(1000, int(round(EPOCH_FLOPS / worst / 0.9, -3)))   # a tenth of it validates


def compose(overrides_: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from vae_train.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides_))


def train_flops_per_image(cfg, epochs: int) -> tuple[list, dict]:
    """The objective's stages, and stage -> FLOPs of one training step (every phase's forward
    and backward) per image, counted on a CPU build of the config (FlopCounterMode has no
    formula for cuDNN's RNN kernels; on the CPU a GRU is matrix products it counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vae_train.build import build
    from vae_train.data import to_float
    from vae_train.models.base import set_stage, stages_of

    torch.manual_seed(0)
    dm, objective, model = build(cfg, torch.device("cpu"))
    model.train()
    bs = int(cfg.trainer.batch_size)
    x, y = to_float(dm.train.x[:bs]), dm.train.y[:bs]
    stages = stages_of(model, epochs)
    out = {}
    for stage, _, phases in stages:
        set_stage(model, stage)
        with FlopCounterMode(display=False) as counter:
            for phase in phases:
                objective(model, x, y, step=0, phase=phase)["loss"].backward()
        model.zero_grad(set_to_none=True)
        out[stage] = counter.get_total_flops() / len(x)
    return stages, out


def run_bare(cfg, epochs: int, device: torch.device, amp_dtype, compile_: bool = False) -> dict:
    """The floor: the trainer's model, objective, optimizers, data and batch size, in a
    hand-written loop over pre-loaded float tensors. Returns per-stage epoch times and the
    test loss (the objective's ``loss`` in evaluation) of the final weights."""
    from vae_train.build import build
    from vae_train.data import to_float
    from vae_train.device import wants_channels_last
    from vae_train.models.base import parameter_groups_of, set_stage, stages_of
    from vae_train.training.optim import build_optimizers

    torch.manual_seed(int(cfg.seed))
    dm, objective, model = build(cfg, device)
    layout = wants_channels_last(cfg.device.channels_last, model, device)
    if layout:   # as the trainer does (device.channels_last; auto: conv models on CUDA)
        model.to(memory_format=torch.channels_last)
    optimizers, _ = build_optimizers(cfg, parameter_groups_of(model, objective))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    amp = ((lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None
           else contextlib.nullcontext)
    x_all, y_all = to_float(dm.train.x), dm.train.y     # pre-loaded floats on the device
    if layout and x_all.dim() == 4:
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    n, bs = len(x_all), int(cfg.trainer.batch_size)

    def loss_of(x, y, step, phase):
        return objective(model, x, y, step=step, phase=phase)["loss"]

    if compile_:   # the whole loss (model and objective): compiling only the networks gains
        loss_of = torch.compile(loss_of)   # nothing on the CPU; the loss's pointwise ops fuse
    graphs0 = _compiled_graphs()
    stages = stages_of(model, epochs)
    out, step = {}, 0
    model.train()
    for stage, stage_epochs, phases in stages:
        set_stage(model, stage)
        times = []
        for _ in range(stage_epochs):
            sync(device)
            t0 = time.perf_counter()
            perm = torch.randperm(n, device=device)
            for i in range(0, n, bs):
                idx = perm[i:i + bs]
                x, y = x_all[idx], y_all[idx]
                for phase in phases:
                    with amp():
                        loss = loss_of(x, y, step, phase)
                    opt = optimizers[phase]
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                if scaler.is_enabled():
                    scaler.update()
                step += 1
            sync(device)
            times.append({"train_seconds": time.perf_counter() - t0, "train_images": n})
        out[stage] = times
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, y in dm.eval_batches(dm.test, int(cfg.trainer.eval_batch_size)):
            with amp():
                total += float(objective(model, x, y, step=step, train=False)["loss"]) * len(x)
    result = {"stages": out, "test_loss": total / len(dm.test), "channels_last": layout}
    if compile_:   # more than a few: a schedule of the step (gumbel tau) recompiles
        result["compiled_graphs"] = _compiled_graphs() - graphs0
    return result


def _compiled_graphs() -> int:
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - a diagnostic only
        return 0


def run_vae_train(args_: list[str], tmp: Path, name: str, env: dict) -> dict:
    """``python -m vae_train ARGS`` with its run directory in ``tmp``; epoch times from
    metrics.json, split by stage (the history has one entry per epoch, stages in order)."""
    run_dir = tmp / f"run-{name}"
    cmd = [sys.executable, "-m", "vae_train", *args_, "trainer.progress=false",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, env={**env, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"vae-train exited with {proc.returncode}:\n{tail}")
    m = json.loads((run_dir / "metrics.json").read_text())
    epochs = [{"train_seconds": h["train_seconds"], "epoch_seconds": h["epoch_seconds"],
               "train_images": round(h["train_images_per_sec"] * h["train_seconds"])}
              for h in m["history"]]
    return {"epochs": epochs, "test_loss": m["test_loss"]}


def split_stages(epochs: list, stages: list) -> dict:
    out, i = {}, 0
    for stage, n, _ in stages:
        out[stage] = epochs[i:i + n]
        i += n
    return out


def summarise(epochs: list) -> dict:
    """Mean of the epochs after the first (warm-up) where there are any."""
    eps = epochs[1:] or epochs
    train_s = sum(e["train_seconds"] for e in eps) / len(eps)
    images = sum(e["train_images"] for e in eps) / len(eps)
    row = {"train_images": round(images), "train_seconds": train_s,
           "images_per_sec": images / train_s, "epochs_averaged": len(eps),
           # the fastest of those epochs: less moved by another process's burst on a shared CPU
           "best_images_per_sec": max(e["train_images"] / e["train_seconds"] for e in eps)}
    if "epoch_seconds" in eps[0]:
        row["epoch_seconds"] = sum(e["epoch_seconds"] for e in eps) / len(eps)
    return row


# -- the device's measured matrix throughput -------------------------------------------------
def _best_seconds(fn, device: torch.device, seconds: float) -> float:
    fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    reps = max(1, int(seconds / 3 / max(time.perf_counter() - t0, 1e-6)))
    best = math.inf
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 0.5) -> dict:
    """FLOP/s of an n x n x n product at ``dtype``: as a matmul (BLAS: MKL on the CPU, cuBLAS)
    and, on the CPU, as a 1x1 convolution (oneDNN, whose kernels can be faster than MKL's on
    AMD processors); ``peak`` is the better of the two."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = {"matmul": 2 * n ** 3 / _best_seconds(lambda: a @ b, device, seconds)}
    if device.type == "cpu":
        x, w = a.view(1, n, n // 64, 64), b.view(n, n, 1, 1)
        out["conv1x1"] = 2 * n ** 3 / _best_seconds(lambda: F.conv2d(x, w), device, seconds)
    out["peak"] = max(out.values())
    return out


def peaks(device: torch.device, precisions: list[str], n: int | None = None) -> dict:
    """precision -> measured FLOP/s (fp16 only on a GPU: the CPU has no fast fp16 matmul)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    out = {}
    for p in ["32", *[p for p in precisions if p != "32"]]:
        if p == "16" and device.type != "cuda":
            continue
        if p == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        out[p] = {"size": n, **matmul_peak(device, PEAK_DTYPE[p], n)}
    return out


# -- one family -----------------------------------------------------------------------------
def plan_family(model: str, precision: str, args, root: Path, device: torch.device) -> dict:
    """What one family's rows run: its composed config, stages, FLOPs and the vae-train
    command line; the repetitions' results are added by :func:`run_family_rep`."""
    plan = {"model": model, "precision": precision, "errors": {}, "bare_runs": [],
            "vt_runs": []}
    # The FLOPs of a step at the config's defaults, which also give the stages: every later
    # stage then runs --epochs epochs, and the FLOPs choose the training images on a CPU.
    extra = list(args.override)
    try:
        cfg = compose(overrides(model, root, args.epochs, args.device, precision, None, extra,
                                args.dataset))
        stages, flops = train_flops_per_image(cfg, args.epochs)
        lengths = stage_lengths(cfg, stages, args.epochs)
        extra += lengths
        stages = [(s.name, args.epochs if i == 0 or f"model.{s.name}_epochs={args.epochs}"
                   in lengths else s.epochs, s.phases) for i, s in enumerate(stages)]
    except Exception as e:  # noqa: BLE001
        stages, flops = None, {}
        plan["errors"]["flops"] = f"{type(e).__name__}: {e}"
    size = args.train_size if args.train_size is not None else (
        default_train_size(flops, device) if args.dataset == "fashion_mnist" else None)
    ov = overrides(model, root, args.epochs, args.device, precision, size, extra, args.dataset)
    cli = list(ov)
    if args.compile:
        cli.append("device.compile=true")
    variants = {name: [*cli, *extra_] for name, extra_ in parse_variants(args.variant)}
    plan.update(stages=stages or [("train", args.epochs, ("main",))], flops=flops, size=size,
                cfg=compose(ov), cli=cli, variants=variants,
                variant_runs={name: [] for name in variants},
                video=args.dataset == "fashion_mnist" and is_video_family(model, extra))
    return plan


def run_family_rep(plan: dict, args, tmp: Path, device: torch.device, env: dict, rep: int,
                   log=print) -> None:
    """One repetition of a family's rows: the bare loop and vae-train (in this order in even
    repetitions, the other way round in odd ones); a row that fails records why and is not
    run again."""
    from vae_train.device import PRECISIONS

    model, precision, errors = plan["model"], plan["precision"], plan["errors"]
    tag = f" (repetition {rep + 1})" if args.reps > 1 else ""

    def bare():
        if "bare" in errors:
            return
        try:
            log(f"[{model} {precision}] bare loop{tag} ...")
            plan["bare_runs"].append(run_bare(plan["cfg"], args.epochs, device,
                                              PRECISIONS[precision], args.compile))
        except Exception as e:  # noqa: BLE001 - one family's failure must not lose the others
            errors["bare"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"

    def cli():
        if args.no_cli or "vae_train" in errors:
            return
        try:
            log(f"[{model} {precision}] vae-train{tag} ...")
            plan["vt_runs"].append(run_vae_train(plan["cli"], tmp, f"{model}-{precision}-{rep}",
                                                 env))
        except Exception as e:  # noqa: BLE001
            errors["vae_train"] = str(e)

    def variant(name):
        def run():
            if args.no_cli or f"variant {name}" in errors:
                return
            try:
                log(f"[{model} {precision}] vae-train {name}{tag} ...")
                plan["variant_runs"][name].append(run_vae_train(
                    plan["variants"][name], tmp, f"{model}-{precision}-{name}-{rep}", env))
            except Exception as e:  # noqa: BLE001
                errors[f"variant {name}"] = str(e)
        return run

    order = [bare, cli, *(variant(n) for n in plan.get("variants", {}))]
    for run in (order if rep % 2 == 0 else order[::-1]):
        run()


def parse_variants(specs: list[str]) -> list[tuple[str, list[str]]]:
    """``NAME:KEY=VALUE[,KEY=VALUE...]`` -> (NAME, overrides): another vae-train row of each
    family with these overrides on top, run in the same repetitions (e.g. the cost of the
    non-finite check read back every step: ``every_step:trainer.nonfinite_check=every_step``)."""
    out = []
    for spec in specs or []:
        name, sep, rest = spec.partition(":")
        if not sep or not name or "=" not in rest:
            raise SystemExit(f"--variant {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
        out.append((name, [o for o in rest.split(",") if o]))
    return out


def spread(values: list[float]) -> dict:
    """Median and range of per-repetition values."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": list(values)}


def combine(summaries: list[dict]) -> dict:
    """Per-repetition summaries (:func:`summarise`) as one: the median of each number, the
    range of the images per second and each repetition's."""
    out = {k: statistics.median(s[k] for s in summaries) for k in summaries[0]
           if all(isinstance(s.get(k), (int, float)) for s in summaries)}
    ips = [s["images_per_sec"] for s in summaries]
    out.update(reps=len(summaries), images_per_sec_range=[min(ips), max(ips)],
               images_per_sec_reps=ips)
    if "train_images" in out:
        out["train_images"] = round(out["train_images"])
    return out


def family_rows(plan: dict, args) -> list[dict]:
    """The rows of a family (one per stage) from its repetitions: the median of each side,
    and the ratio vae-train / bare taken within each repetition, as median and range."""
    rows = []
    stages, flops, errors = plan["stages"], plan["flops"], plan["errors"]
    base = {"model": plan["model"], "precision": plan["precision"],
            "compile": bool(args.compile), "compile_cli": bool(args.compile),
            "dataset_train_size": plan["size"]}
    bares, vts = plan["bare_runs"], plan["vt_runs"]
    vt_stages = [split_stages(v["epochs"], stages) for v in vts]
    for stage, _, phases in stages:
        row = {**base, "stage": stage if len(stages) > 1 else None, "phases": list(phases)}
        bare_s = [summarise(b["stages"][stage]) for b in bares if b["stages"].get(stage)]
        vt_s = [summarise(v[stage]) for v in vt_stages if v.get(stage)]
        if bare_s:
            row["bare"] = combine(bare_s)
        if vt_s:
            row["vae_train"] = combine(vt_s)
        if bares:
            row["channels_last"] = bares[-1]["channels_last"]
        if bares and "compiled_graphs" in bares[-1]:
            row["bare_compiled_graphs"] = bares[-1]["compiled_graphs"]
        if stage == stages[-1][0]:
            if vts:
                row["vae_train_test_loss"] = statistics.median(v["test_loss"] for v in vts)
            if bares:
                row["bare_test_loss"] = statistics.median(b["test_loss"] for b in bares)
        if bare_s and vt_s:
            r = spread([v["images_per_sec"] / b["images_per_sec"]
                        for v, b in zip(vt_s, bare_s)])
            row.update(ratio=r["median"], ratio_range=[r["min"], r["max"]],
                       ratio_reps=r["values"])
        if "vae_train" in row and args.dataset == "fashion_mnist" and not plan["video"]:
            row["seconds_per_full_epoch"] = FULL_EPOCH / row["vae_train"]["images_per_sec"]
        if stage in flops:
            row["train_flops_per_image"] = flops[stage]
        if errors:
            row["errors"] = dict(errors)
        rows.append(row)
        for name, runs in plan.get("variant_runs", {}).items():
            var_s = [summarise(v[stage]) for v in (split_stages(r["epochs"], stages)
                                                    for r in runs) if v.get(stage)]
            if not var_s:
                continue
            var = {**base, "model": f"{plan['model']} [{name}]", "variant": name,
                   "variant_overrides": plan["variants"][name][len(plan["cli"]):],
                   "stage": row["stage"], "phases": list(phases), "vae_train": combine(var_s)}
            if bare_s:
                r = spread([v["images_per_sec"] / b["images_per_sec"]
                            for v, b in zip(var_s, bare_s)])
                var.update(ratio=r["median"], ratio_range=[r["min"], r["max"]],
                           ratio_reps=r["values"])
            if vt_s:   # the variant against the default vae-train row, per repetition
                r = spread([v["images_per_sec"] / d["images_per_sec"]
                            for v, d in zip(var_s, vt_s)])
                var.update(vs_default=r["median"], vs_default_range=[r["min"], r["max"]])
            if stage == stages[-1][0]:
                var["vae_train_test_loss"] = statistics.median(r["test_loss"] for r in runs)
            rows.append(var)
    return rows


def bench_family(model: str, precision: str, args, root: Path, tmp: Path, device: torch.device,
                 env: dict, log=print) -> list[dict]:
    """A family's rows on their own: ``args.reps`` repetitions of (bare, vae-train)."""
    plan = plan_family(model, precision, args, root, device)
    for rep in range(args.reps):
        run_family_rep(plan, args, tmp, device, env, rep, log)
    return family_rows(plan, args)


def add_classic_ratios(results: list[dict], classic_runs: list[dict]) -> None:
    """vae-train's (and the bare loop's) img/s over the classic example's, taken within each
    repetition, for the rows of the MLP VAE: median and range."""
    ips = [c["images_per_sec"] for c in classic_runs]
    for r in results:
        if r["model"] != "vae":
            continue
        for key, name in (("vae_train", "vs_classic"), ("bare", "bare_vs_classic")):
            if key in r:
                s = spread([v / c for v, c in zip(r[key]["images_per_sec_reps"], ips)])
                r[name], r[f"{name}_range"] = s["median"], [s["min"], s["max"]]


def add_fractions(rows: list[dict], peak: dict) -> None:
    for row in rows:
        flops, p = row.get("train_flops_per_image"), peak.get(row["precision"], {}).get("peak")
        if not flops or not p:
            continue
        row["matmul_peak_flops"] = p
        for key in ("vae_train", "bare"):
            if key in row:
                row[key]["fraction_of_peak"] = row[key]["images_per_sec"] * flops / p


# -- output --------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    """The 1-minute load average (other processes share a CPU: a load above the core count
    makes the numbers of this run unreliable), or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def fmt(v, spec: str, width: int) -> str:
    return f"{v:{width}{spec}}" if isinstance(v, (int, float)) and math.isfinite(v) \
        else f"{'-':>{width}}"


def fmt_range(r, width: int) -> str:
    """A [min, max] range as ``min..max`` (``-`` when there is none)."""
    if not r or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in r):
        return f"{'-':>{width}}"
    return f"{f'{r[0]:.2f}..{r[1]:.2f}':>{width}}"


def table(report: dict) -> str:
    head = (f"{'model':18} {'prec':>4} {'vae-train':>10} {'bare':>9} {'ratio':>6} "
            f"{'(range)':>11} {'x classic':>9} {'(range)':>11} {'s/epoch':>8} "
            f"{'test loss':>10} {'MFLOP/img':>9} {'%peak':>6}")
    lines = [head, "-" * len(head)]
    c = report.get("classic")
    if c:
        lines.append(f"{'vae (classic)':18} {'32':>4} {fmt(c['images_per_sec'], '.0f', 10)} "
                     f"{'':9} {'':6} {'':11} {fmt(1.0, '.2f', 9)} {'':11} "
                     f"{fmt(FULL_EPOCH / c['images_per_sec'], '.2f', 8)} "
                     f"{fmt(c.get('test_loss'), '.2f', 10)}")
    for r in report["results"]:
        name = r["model"] + (f":{r['stage']}" if r.get("stage") else "")
        vt, bare = r.get("vae_train", {}), r.get("bare", {})
        loss = r.get("vae_train_test_loss", r.get("bare_test_loss"))
        flops = r.get("train_flops_per_image")
        frac = vt.get("fraction_of_peak", bare.get("fraction_of_peak"))
        lines.append(
            f"{name:18} {r['precision']:>4} {fmt(vt.get('images_per_sec'), '.0f', 10)} "
            f"{fmt(bare.get('images_per_sec'), '.0f', 9)} {fmt(r.get('ratio'), '.2f', 6)} "
            f"{fmt_range(r.get('ratio_range'), 11)} {fmt(r.get('vs_classic'), '.2f', 9)} "
            f"{fmt_range(r.get('vs_classic_range'), 11)} "
            f"{fmt(r.get('seconds_per_full_epoch'), '.2f', 8)} "
            f"{fmt(loss, '.2f', 10)} {fmt(flops / 1e6 if flops else None, '.2f', 9)} "
            f"{fmt(frac * 100 if frac is not None else None, '.1f', 6)}"
            + (f"  x default {r['vs_default']:.3f} ({r['vs_default_range'][0]:.2f}.."
               f"{r['vs_default_range'][1]:.2f})" if r.get("vs_default") is not None else "")
            + ("  (" + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in r["errors"].items())
               + ")" if r.get("errors") else ""))
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                    help="model options (default: every one in configs/model/); a model of "
                         "your own by its config name, with --override hydra.searchpath=...")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per stage (default 3)")
    ap.add_argument("--reps", type=int, default=3,
                    help="repetitions of every row, interleaved (default 3; each ratio is "
                         "taken within a repetition and reported as median and range)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--precision", nargs="+", default=None, choices=list(PEAK_DTYPE),
                    help="device.precision values (default: 32, and bf16 too for model vae)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile: device.compile=true for vae-train, the bare loop's "
                         "loss and backward compiled")
    ap.add_argument("--train-size", type=int, default=None,
                    help="dataset.train_size for every family (default: on a CPU, as many "
                         "images as EPOCH_FLOPS hold, all of them on a GPU)")
    ap.add_argument("--dataset", default="fashion_mnist",
                    help="the data set every family trains on (default fashion_mnist; another "
                         "one, yours included, as its config has it: no classic row, no "
                         "s/epoch, every image unless --train-size)")
    ap.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                    help="more overrides for every run, e.g. hydra.searchpath=[file://conf] "
                         "to find a model of your own")
    ap.add_argument("--variant", nargs="+", default=[], metavar="NAME:KEY=VALUE[,...]",
                    help="another vae-train row per family with these overrides, run in the "
                         "same repetitions, e.g. every_step:trainer.nonfinite_check=every_step "
                         "(the non-finite check's cost); the row's vs_default in the JSON")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads here and OMP_NUM_THREADS for vae-train (default: torch's)")
    ap.add_argument("--no-classic", action="store_true", help="skip the classic example row")
    ap.add_argument("--no-cli", action="store_true", help="skip the vae-train rows")
    ap.add_argument("--peak-size", type=int, default=None,
                    help="side of the matmul timed for the peak (default 2048 CPU, 8192 GPU)")
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmark.json"))
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.reps < 1:
        ap.error("--epochs and --reps must be at least 1")
    args.models = args.models or families()
    return args


def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")
    return torch.device(device)


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--data"]:   # the data paths: scripts/benchmark_data.py with the rest
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import benchmark_data
        return benchmark_data.main(argv[1:])
    args = parse_args(argv)
    device = resolve(args.device)
    args.device = device.type
    env = dict(os.environ)
    if args.threads:
        torch.set_num_threads(args.threads)
        env["OMP_NUM_THREADS"] = str(args.threads)
    fashion = args.dataset == "fashion_mnist"
    raw = find_raw(args.data_root) if fashion else None
    started = time.time()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    jobs = [(m, p) for m in args.models
            for p in (args.precision or (["32", "bf16"] if m == "vae" else ["32"]))]
    precisions = sorted({p for _, p in jobs}, key=list(PEAK_DTYPE).index)
    report = {"device": str(device), "device_name": device_name(device),
              "overrides": list(args.override), "dataset": args.dataset,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "epochs": args.epochs, "reps": args.reps, "compile": bool(args.compile),
              "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
              "load_average_start": load_average(), "results": []}
    log("matmul peak ...")
    report["matmul_peak_flops"] = peak = peaks(device, precisions, args.peak_size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = torchvision_root(raw, tmp / "tv") if fashion else None
        classic = "vae" in args.models and fashion and not args.no_classic
        plans = [plan_family(m, p, args, root, device) for m, p in jobs]
        classic_runs = []
        # A B C ... A B C ...: every row once per repetition (the families' order reversed
        # every other repetition), so that a slow minute of the machine is shared
        for rep in range(args.reps):
            if classic:
                log(f"[vae classic] torchvision + ToTensor + DataLoader (repetition {rep + 1})"
                    " ...")
                c = run_classic(root, args.epochs, device)
                classic_runs.append({**summarise(c["stages"]["train"]),
                                     "test_loss": c["test_loss"]})
            for plan in (plans if rep % 2 == 0 else plans[::-1]):
                run_family_rep(plan, args, tmp, device, env, rep, log)
        for plan in plans:
            report["results"] += family_rows(plan, args)
    add_fractions(report["results"], peak)
    if classic_runs:
        report["classic"] = {**combine([{k: v for k, v in c.items() if k != "test_loss"}
                                        for c in classic_runs]),
                             "test_loss": statistics.median(c["test_loss"] for c in classic_runs)}
        add_classic_ratios(report["results"], classic_runs)
    report["wall_seconds"] = time.time() - started
    report["load_average_end"] = load_average()
    print(f"\n{args.dataset}, batch 128, {args.epochs} epoch(s) per stage, {device} "
          f"({report['device_name']}), {report['threads']} threads, torch {torch.__version__}"
          + (", torch.compile" if args.compile else ""))
    loads = [x for x in (report["load_average_start"], report["load_average_end"]) if x is not None]
    if loads and max(loads) > (os.cpu_count() or 1):
        print(f"note: load average {max(loads):.1f} on {os.cpu_count()} cores: other processes "
              "shared the CPU, these numbers are not reliable")
    print("matmul peak: " + ", ".join(f"{p} {v['peak'] / 1e9:.0f} GFLOP/s"
                                      for p, v in peak.items()))
    print(table(report))
    print(f"medians of {args.reps} interleaved repetition(s); (range): min..max of the "
          "ratio over the repetitions, each taken within one repetition")
    print("img/s: training images per second (later epochs); ratio: vae-train / bare; "
          "s/epoch: 54,000 images at the vae-train rate; %peak: vae-train img/s x FLOPs/img "
          "/ matmul peak at the row's precision")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({report['wall_seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
