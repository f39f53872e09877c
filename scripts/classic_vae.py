#!/usr/bin/env python
"""The classic PyTorch VAE example (pytorch/examples, ``vae/main.py``) on Fashion-MNIST, as one
process: the baseline of ``scripts/startup.py``'s whole-process row.

What it does is the example's, step for step: torchvision's data set with ``ToTensor`` and a
shuffling ``DataLoader`` (batch 128), the 784-400-20 MLP with a sigmoid decoder, summed binary
cross-entropy plus the analytic KL, Adam at 1e-3, seed 1; each epoch trains on the 60,000
training images (a log line every 10 batches, ``loss.item()`` every step), computes the test
loss on 10,000 images, saves a reconstruction grid of the first test batch and a grid of 64
prior samples (``torchvision.utils.save_image``). The only change: Fashion-MNIST instead of
MNIST, read from torchvision's layout under ``--root`` (``<root>/FashionMNIST/raw/``, the
four unpacked IDX files; nothing is downloaded).

Usage:  python scripts/classic_vae.py --root DIR [--epochs 2] [--out DIR] [--quiet]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.utils.data
from torch import nn, optim
from torch.nn import functional as F
from torchvision import datasets, transforms
from torchvision.utils import save_image


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="folder holding FashionMNIST/raw/")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--log-interval", type=int, default=10)
    ap.add_argument("--out", default="results", help="folder for the PNG grids")
    ap.add_argument("--quiet", action="store_true", help="no per-batch log lines")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    train_loader = torch.utils.data.DataLoader(
        datasets.FashionMNIST(args.root, train=True, download=False,
                              transform=transforms.ToTensor()),
        batch_size=args.batch_size, shuffle=True, **kwargs)
    test_loader = torch.utils.data.DataLoader(
        datasets.FashionMNIST(args.root, train=False, transform=transforms.ToTensor()),
        batch_size=args.batch_size, shuffle=False, **kwargs)
    os.makedirs(args.out, exist_ok=True)
    model = VAE().to(device)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    test_loss = float("nan")
    for epoch in range(1, args.epochs + 1):
        model.train()
        train_loss, t0 = 0.0, time.perf_counter()
        for batch_idx, (data, _) in enumerate(train_loader):
            data = data.to(device)
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            loss = loss_function(recon_batch, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
            if batch_idx % args.log_interval == 0 and not args.quiet:
                print(f"Train Epoch: {epoch} [{batch_idx * len(data)}/"
                      f"{len(train_loader.dataset)} ({100.0 * batch_idx / len(train_loader):.0f}%)]"
                      f"\tLoss: {loss.item() / len(data):.6f}")
        print(f"====> Epoch: {epoch} Average loss: {train_loss / len(train_loader.dataset):.4f}"
              f" ({time.perf_counter() - t0:.2f} s)")
        model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for i, (data, _) in enumerate(test_loader):
                data = data.to(device)
                recon_batch, mu, logvar = model(data)
                test_loss += loss_function(recon_batch, data, mu, logvar).item()
                if i == 0:
                    n = min(data.size(0), 8)
                    comparison = torch.cat([data[:n], recon_batch.view(len(data), 1, 28, 28)[:n]])
                    save_image(comparison.cpu(), os.path.join(args.out,
                                                              f"reconstruction_{epoch}.png"),
                               nrow=n)
        test_loss /= len(test_loader.dataset)
        print(f"====> Test set loss: {test_loss:.4f}")
        with torch.no_grad():
            sample = model.decode(torch.randn(64, 20).to(device)).cpu()
            save_image(sample.view(64, 1, 28, 28), os.path.join(args.out, f"sample_{epoch}.png"))
    return test_loss


if __name__ == "__main__":
    main()
