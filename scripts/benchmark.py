#!/usr/bin/env python
"""Seconds per epoch: vae-train vs the classic PyTorch VAE example vs a bare loop.

All three train the classic 784-400-20 MLP VAE (summed BCE, Adam 1e-3, batch 128) on
Fashion-MNIST in one run on this machine:

* ``classic``   - written the way the PyTorch example does it: torchvision's dataset with
                  ``ToTensor`` and a shuffling ``DataLoader``; each epoch trains on 60,000
                  images, then computes the test loss on 10,000;
* ``vae-train`` - ``python -m vae_train dataset=fashion_mnist`` itself (54,000 train images and
                  a 6,000-image validation pass per epoch, checkpoints, TensorBoard, pictures);
* ``vae-train bf16`` - the same with ``device.precision=bf16`` (autocast), fast on CPUs with
                  AVX512-BF16 or AMX;
* ``bare``      - a hand-written loop over the same images pre-loaded as one float tensor:
                  the floor any trainer can reach with this model on this device.

Usage:  python scripts/benchmark.py [--epochs 2] [--device cpu] [--out outputs/benchmark.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
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
                           "test_loss": total / len(test.dataset)})
    return {"train_images": len(train.dataset), "epochs": epochs_out}


def run_bare(root: Path, epochs: int, device: torch.device) -> dict:
    from vae_train.data.sources import load_mnist_like
    from vae_train.losses import ELBO
    from vae_train.models.vae import VAE

    data = load_mnist_like("fashion_mnist", root, download=False)
    x_all = data.train_x.float().div(255).to(device)
    torch.manual_seed(2)
    model, objective = VAE((1, 28, 28)).to(device), ELBO()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    n, out = len(x_all), []
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=device)
        for i in range(0, n, 128):
            x = x_all[perm[i:i + 128]]
            loss = objective(model, x)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        loss.item()
        out.append({"train_seconds": time.perf_counter() - t0})
    return {"train_images": n, "epochs": out}


def run_vae_train(root: Path, epochs: int, device: str, tmp: Path, precision: str = "32") -> dict:
    run_dir = tmp / f"vae-train-run-{precision}"
    cmd = [sys.executable, "-m", "vae_train", "dataset=fashion_mnist", f"dataset.root={root}",
           "dataset.download=false", f"trainer.epochs={epochs}", f"device={device}",
           "trainer.progress=false", f"device.precision={precision}", f"hydra.run.dir={run_dir}"]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    m = json.loads((run_dir / "metrics.json").read_text())
    return {"train_images": round(m["history"][0]["train_images_per_sec"]
                                  * m["history"][0]["train_seconds"]),
            "test_loss": m["test_loss"],
            "epochs": [{"train_seconds": h["train_seconds"], "epoch_seconds": h["epoch_seconds"]}
                       for h in m["history"]]}


def summarise(name: str, r: dict) -> dict:
    # the first epoch includes warm-up; report the mean of the later ones when there are any
    eps = r["epochs"][1:] or r["epochs"]
    train_s = sum(e["train_seconds"] for e in eps) / len(eps)
    ips = r["train_images"] / train_s
    row = {"name": name, "train_images": r["train_images"], "train_seconds": train_s,
           "images_per_sec": ips, "seconds_per_60k": 60000 / ips}
    if "epoch_seconds" in eps[0]:
        row["epoch_seconds"] = sum(e["epoch_seconds"] for e in eps) / len(eps)
    loss = r.get("test_loss", r["epochs"][-1].get("test_loss"))
    if loss is not None:
        row["test_loss"] = loss
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmark.json"))
    ap.add_argument("--also-precision", nargs="*", default=["bf16"],
                    help="extra vae-train rows at these device.precision values (default: bf16)")
    args = ap.parse_args()
    device = torch.device(args.device)
    raw = find_raw(args.data_root)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = torchvision_root(raw, tmp / "tv")
        results = [summarise("classic", run_classic(root, args.epochs, device)),
                   summarise("vae-train", run_vae_train(root, args.epochs, args.device, tmp)),
                   *[summarise(f"vae-train {p}", run_vae_train(root, args.epochs, args.device,
                                                                tmp, p))
                     for p in args.also_precision],
                   summarise("bare", run_bare(root, args.epochs, device))]
    base = results[0]["seconds_per_60k"]
    print(f"\nFashion-MNIST, 784-400-20 VAE, batch 128, {args.epochs} epochs, device {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'':14} {'img/s':>8} {'s/60k img':>10} {'speed-up':>9} {'epoch s':>8} {'test loss':>10}")
    for r in results:
        r["speedup_vs_classic"] = base / r["seconds_per_60k"]
        print(f"{r['name']:14} {r['images_per_sec']:8.0f} {r['seconds_per_60k']:10.2f} "
              f"{r['speedup_vs_classic']:8.2f}x {r.get('epoch_seconds', float('nan')):8.2f} "
              f"{r.get('test_loss', float('nan')):10.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "epochs": args.epochs,
                                    "threads": torch.get_num_threads(),
                                    "torch": torch.__version__, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
