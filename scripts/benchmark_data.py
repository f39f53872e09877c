#!/usr/bin/env python
"""Speed of the data paths for a user's own images (``dataset=folder``).

Rows:

* ``decode``    - the folder loader decoding every image into its uint8 array, without the
                  cache, with 1 worker process and with every core: images per second, and per
                  core;
* ``cache``     - the first load with the decode cache (decode + write) and the second (a hit:
                  walk the folder, check the cache, map it), in seconds;
* ``train``     - the real command line training the conv VAE on the folder with the data in
                  memory (``dataset.in_memory=true``) and read from the memory-mapped cache a
                  batch at a time by a background thread (``dataset.in_memory=false``): train
                  images per second from each run's ``metrics.json``. The two are interleaved
                  (A B A B ...) over ``--reps`` repetitions, since this machine is noisy; the
                  median and spread (min..max) of the per-repetition ratio are reported.

The folder is ``--folder DIR``, or Fashion-MNIST written out as PNGs with class sub-folders
(``train/`` and ``test/``) into a temporary folder from the files vae-train reads
(``/usr/share/datasets/fashion-mnist`` on Debian, or ``--data-root``).

Usage:  python scripts/benchmark_data.py [--folder DIR] [--images 20000] [--reps 3]
            [--train-size 10000] [--epochs 1] [--model conv_vae] [--override KEY=VALUE ...]
            [--out outputs/benchmark_data.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_pngs(out: Path, images: int, data_root: str | None) -> Path:
    """Fashion-MNIST as PNGs: ``out/{train,test}/<class>/<n>.png`` (``images`` training
    images and a sixth as many test images)."""
    from PIL import Image

    from vae_train.data.torchvision_sets import FashionMNIST

    data = FashionMNIST(root=data_root or os.environ.get("VAE_DATA_DIR", "data"),
                        download=False).read()
    for split, x, y, n in (("train", data.train_x, data.train_y, images),
                           ("test", data.test_x, data.test_y, max(1, images // 6))):
        for i in range(min(n, len(x))):
            folder = out / split / f"{int(y[i]):d}_{data.classes[int(y[i])].replace('/', '-')}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i, 0].numpy()).save(folder / f"{i:05d}.png")
    return out


def timed_load(folder: Path, **options) -> tuple[float, int]:
    from vae_train.data.folder import Folder

    start = time.perf_counter()
    data = Folder(path=str(folder), channels=1, **options).load()
    return time.perf_counter() - start, len(data.train_x) + len(data.test_x)


def decode_rows(folder: Path, cache_dir: Path) -> dict:
    cores = os.cpu_count() or 1
    one, n = timed_load(folder, cache=False, workers=1)
    every, _ = timed_load(folder, cache=False, workers=cores)
    first, _ = timed_load(folder, cache=True, cache_dir=str(cache_dir))
    hit, _ = timed_load(folder, cache=True, cache_dir=str(cache_dir))
    return {"images": n, "cores": cores,
            "decode_1_worker_img_per_s": n / one,
            "decode_all_cores_img_per_s": n / every,
            "decode_per_core_img_per_s": n / every / cores,
            "cache_first_load_s": first, "cache_hit_s": hit}


def train_run(folder: Path, cache_dir: Path, in_memory: bool, run_dir: Path, args) -> float:
    cmd = [sys.executable, "-m", "vae_train", f"model={args.model}", "dataset=folder",
           f"dataset.path={folder}", "dataset.channels=1", f"dataset.cache_dir={cache_dir}",
           f"dataset.in_memory={str(in_memory).lower()}", f"dataset.train_size={args.train_size}",
           f"trainer.epochs={args.epochs}", "trainer.progress=false", "device=cpu",
           "trainer.image_every_epochs=0", f"hydra.run.dir={run_dir}", *args.override]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    later = history[1:] or history          # the first epoch includes warm-up
    return statistics.mean(h["train_images_per_sec"] for h in later)


def train_rows(folder: Path, cache_dir: Path, tmp: Path, args) -> dict:
    memory, files, ratios = [], [], []
    for rep in range(args.reps):
        a = train_run(folder, cache_dir, True, tmp / f"memory_{rep}", args)
        b = train_run(folder, cache_dir, False, tmp / f"file_{rep}", args)
        memory.append(a)
        files.append(b)
        ratios.append(b / a)
        print(f"  rep {rep + 1}: in memory {a:.0f} img/s, from the file {b:.0f} img/s, "
              f"ratio {b / a:.3f}", file=sys.stderr)
    return {"model": args.model, "train_size": args.train_size, "epochs": args.epochs,
            "in_memory_img_per_s": memory, "from_file_img_per_s": files,
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios)}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=None, help="a folder of images (default: "
                    "Fashion-MNIST written out as PNGs)")
    ap.add_argument("--images", type=int, default=20000, help="training PNGs to write")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="conv_vae")
    ap.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-train", action="store_true", help="only the decode rows")
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmark_data.json"))
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vae_bench_data_") as tmp_name:
        tmp = Path(tmp_name)
        folder = args.folder or write_pngs(tmp / "pngs", args.images, args.data_root)
        print(f"folder: {folder}", file=sys.stderr)
        report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                  "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                  "load_average": os.getloadavg()[0]}
        report["decode"] = decode_rows(folder, tmp / "cache")
        if not args.no_train:
            report["train"] = train_rows(folder, tmp / "cache", tmp, args)
    d = report["decode"]
    print(f"decode: {d['images']} images, 1 worker {d['decode_1_worker_img_per_s']:.0f} img/s, "
          f"{d['cores']} cores {d['decode_all_cores_img_per_s']:.0f} img/s "
          f"({d['decode_per_core_img_per_s']:.0f} per core); cache: first load "
          f"{d['cache_first_load_s']:.2f} s, hit {d['cache_hit_s']:.2f} s")
    if "train" in report:
        t = report["train"]
        print(f"train {t['model']}: from the file / in memory = {t['ratio_median']:.3f} "
              f"(median of {args.reps}; {t['ratio_min']:.3f}..{t['ratio_max']:.3f}); in memory "
              f"{np.median(t['in_memory_img_per_s']):.0f} img/s, from the file "
              f"{np.median(t['from_file_img_per_s']):.0f} img/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
