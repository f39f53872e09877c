#!/usr/bin/env python
"""How fast a short run starts and ends: vae-train's start-up and a whole 2-epoch process,
as ratios to ``python -c "import torch"`` and to the classic PyTorch VAE example.

Rows (each a fresh process, timed from its start by this script):

* ``import torch``      - ``python -c "import torch"``: the yardstick, measured in every
                          repetition;
* ``import vae_train``  - ``python -c "import vae_train.train"``; target: at most 1.3x
                          ``import torch``;
* ``first step``        - ``python -m vae_train dataset=fashion_mnist ...`` until its first
                          training step has finished (the command runs with the trainer's step
                          wrapped to note the time and end the process there); the data on
                          disk and their parsed arrays cached (a warm-up run fills the cache);
                          target: at most 2x ``import torch``;
* ``vae-train N ep``    - the whole process of ``python -m vae_train dataset=fashion_mnist
                          trainer.epochs=N`` (the MLP VAE 784-400-20, batch 128: its
                          defaults), validation, test pass, pictures, TensorBoard and
                          checkpoints included; one row per ``--precision``;
* ``classic N ep``      - the whole process of the classic example (``scripts/classic_vae.py``:
                          torchvision's data set, ``ToTensor``, a shuffling ``DataLoader``, the
                          same model and batch, a test pass and two PNGs per epoch) for N
                          epochs; target: vae-train at least 2.5x as fast (classic seconds
                          over vae-train seconds).

Every row runs once in each of ``--reps`` repetitions, interleaved (A B C ... A B C ..., the
order reversed every other repetition), after one untimed warm-up of each (page cache, the
array cache). Each ratio is taken within a repetition (the same minute of this shared
machine) and reported as the median over the repetitions with its range (min..max) and
interquartile range. Every process gets ``OMP_NUM_THREADS=--threads`` (default 1: on a shared
2-core machine two threads are slower than one when another process is busy).

Fashion-MNIST comes from ``--data-root`` (a folder holding the four IDX files, .gz or plain,
directly or under ``FashionMNIST/raw``; default: Debian's ``/usr/share/datasets/fashion-mnist``);
vae-train reads them where they are, the classic example from an unpacked copy in
torchvision's layout made once in a temporary folder.

``--quick``: one repetition, one epoch, no warm-up (a smoke test of the script; its numbers
are one sample each).

Usage:  python scripts/startup.py [--reps 5] [--epochs 2] [--threads 1] [--precision 32 bf16]
            [--data-root DIR] [--override KEY=VALUE ...] [--rows import first whole]
            [--quick] [--out outputs/startup.json]
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte"]
TARGETS = {"import": 1.3, "first_step": 2.0, "vs_classic": 2.5}
ROWS = ("import", "first", "whole")

# ``python -c`` program: the real command line (vae_train.train.main with the arguments that
# follow), with the trainer's step wrapped to write the time its first step ended into the
# file $VAE_STARTUP_MARK and end the process there.
FIRST_STEP = """\
import os, sys, time
from vae_train.training.trainer import Trainer
_step = Trainer.train_step
def _first(self, *a, **k):
    out = _step(self, *a, **k)
    with open(os.environ["VAE_STARTUP_MARK"], "w") as f:
        f.write(repr(time.time()))
    os._exit(0)
Trainer.train_step = _first
from vae_train.train import main
sys.argv = ["vae_train", *sys.argv[1:]]
main()
"""


# -- statistics ---------------------------------------------------------------------------------
def spread(values: list[float]) -> dict:
    """Median, min, max and the quartiles (inclusive method; with one value all are it)."""
    v = sorted(values)
    if len(v) >= 2:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    else:
        q1 = q3 = v[0]
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "q1": q1, "q3": q3,
            "n": len(v), "values": values}


# -- data -----------------------------------------------------------------------------------
def find_raw(root: Path | None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files (plain or .gz)."""
    for d in ([root / "FashionMNIST" / "raw", root] if root else []) + [DEBIAN]:
        if all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in FILES):
            return d
    sys.exit("Fashion-MNIST not found: apt-get install dataset-fashion-mnist, or --data-root DIR "
             "(a folder holding the four IDX files)")


def layouts(raw: Path, tmp: Path) -> tuple[Path, Path]:
    """(the ``dataset.root`` for vae-train: ``FashionMNIST/raw`` linking to the files as they
    are; the root for the classic example: the files unpacked, as torchvision wants them)."""
    ours, tv = tmp / "ours" / "FashionMNIST" / "raw", tmp / "tv" / "FashionMNIST" / "raw"
    ours.mkdir(parents=True)
    tv.mkdir(parents=True)
    for f in FILES:
        src = raw / f if (raw / f).is_file() else raw / f"{f}.gz"
        (ours / src.name).symlink_to(src.resolve())
        if src.suffix == ".gz":
            (tv / f).write_bytes(gzip.decompress(src.read_bytes()))
        else:
            shutil.copy(src, tv / f)
    return tmp / "ours", tmp / "tv"


# -- the rows -----------------------------------------------------------------------------------
def commands(args, data: Path, tv: Path, tmp: Path) -> dict:
    """Row name -> (kind, a function of the repetition's tag giving the argument list).
    kind: ``exit`` (timed to the process's end) or ``mark`` (timed to the first step)."""
    py = sys.executable
    ours = ["dataset=fashion_mnist", f"dataset.root={data}", "dataset.download=false",
            *args.override]
    rows = {"import torch": ("exit", lambda tag: [py, "-c", "import torch"])}
    if "import" in args.rows:
        rows["import vae_train"] = ("exit", lambda tag: [py, "-c", "import vae_train.train"])
    if "first" in args.rows:
        rows["first step"] = ("mark", lambda tag: [
            py, "-c", FIRST_STEP, *ours, f"device.precision={args.precision[0]}",
            f"hydra.run.dir={tmp / 'runs' / ('first-' + tag)}"])
    if "whole" in args.rows:
        for p in args.precision:
            rows[f"vae-train {args.epochs} ep" + ("" if p == "32" else f" {p}")] = (
                "exit", lambda tag, p=p: [
                    py, "-m", "vae_train", *ours, f"trainer.epochs={args.epochs}",
                    f"device.precision={p}", f"hydra.run.dir={tmp / 'runs' / (p + '-' + tag)}"])
        rows[f"classic {args.epochs} ep"] = ("exit", lambda tag: [
            py, str(ROOT / "scripts" / "classic_vae.py"), "--root", str(tv), "--epochs",
            str(args.epochs), "--out", str(tmp / "classic" / tag)])
    return rows


def timed(kind: str, cmd: list[str], env: dict, mark: Path) -> float:
    """Seconds from starting ``cmd`` to its end (``exit``) or to the time it wrote into
    ``mark`` (``mark``). A failing command stops the script with its last lines."""
    mark.unlink(missing_ok=True)
    t0 = time.time()
    proc = subprocess.run(cmd, env={**env, "VAE_STARTUP_MARK": str(mark)}, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t1 = time.time()
    if proc.returncode != 0 or (kind == "mark" and not mark.is_file()):
        tail = "\n".join(proc.stdout.strip().splitlines()[-8:])
        raise SystemExit(f"{' '.join(cmd[:3])} ... exited with {proc.returncode}:\n{tail}")
    return (float(mark.read_text()) if kind == "mark" else t1) - t0


def measure(rows: dict, reps: int, warmup: bool, env: dict, tmp: Path, log=print) -> dict:
    """Row name -> seconds of each repetition, the rows interleaved (order reversed every
    other repetition), after one untimed run of each when ``warmup``."""
    mark = tmp / "mark"
    names = list(rows)
    if warmup:
        for name in names:
            log(f"warm-up: {name}")
            timed(rows[name][0], rows[name][1]("warmup"), env, mark)
    out = {name: [] for name in names}
    for rep in range(reps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            kind, cmd = rows[name]
            out[name].append(timed(kind, cmd(str(rep)), env, mark))
        log(f"repetition {rep + 1}/{reps}: " + ", ".join(f"{n} {out[n][-1]:.2f} s"
                                                           for n in names))
    return out


def ratios(seconds: dict, epochs: int, precisions: list[str]) -> dict:
    """Each target's per-repetition ratio: name -> (values, target, higher is better)."""
    torch_s = seconds["import torch"]
    out = {}
    if "import vae_train" in seconds:
        out["import vae_train / import torch"] = (
            [a / b for a, b in zip(seconds["import vae_train"], torch_s)], TARGETS["import"], False)
    if "first step" in seconds:
        out["first step / import torch"] = (
            [a / b for a, b in zip(seconds["first step"], torch_s)], TARGETS["first_step"], False)
    classic = seconds.get(f"classic {epochs} ep")
    for p in precisions:
        row = f"vae-train {epochs} ep" + ("" if p == "32" else f" {p}")
        if classic and row in seconds:
            out[f"classic / {row}"] = ([c / v for c, v in zip(classic, seconds[row])],
                                        TARGETS["vs_classic"], True)
    return out


def table(report: dict) -> str:
    lines = [f"{'row':24} {'median s':>9} {'min..max s':>14} {'IQR s':>14}", "-" * 64]
    for name, s in report["seconds"].items():
        lines.append(f"{name:24} {s['median']:9.2f} {s['min']:6.2f}..{s['max']:<6.2f} "
                     f"{s['q1']:6.2f}..{s['q3']:<6.2f}")
    lines += ["", f"{'ratio':36} {'median':>7} {'min..max':>13} {'IQR':>13} {'target':>8}  ok",
              "-" * 86]
    for name, r in report["ratios"].items():
        sign = ">=" if r["higher_is_better"] else "<="
        ok = r["median"] >= r["target"] if r["higher_is_better"] else r["median"] <= r["target"]
        lines.append(f"{name:36} {r['median']:7.2f} {r['min']:6.2f}..{r['max']:<6.2f} "
                     f"{r['q1']:6.2f}..{r['q3']:<6.2f} {sign + format(r['target'], '.1f'):>8}  "
                     f"{'yes' if ok else 'NO'}")
    return "\n".join(lines)


def load_average():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the whole-process rows")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS of every process (default 1)")
    ap.add_argument("--precision", nargs="+", default=["32"], choices=["32", "bf16", "16"],
                    help="device.precision of the vae-train rows (one whole-process row each; "
                         "the first one for the first-step row)")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS,
                    help="which rows besides import torch: import, first (step), whole "
                         "(process, with the classic example)")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="folder with the four Fashion-MNIST IDX files (default: Debian's)")
    ap.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                    help="more overrides for the vae-train commands")
    ap.add_argument("--quick", action="store_true",
                    help="one repetition, one epoch, no warm-up: a smoke test")
    ap.add_argument("--out", type=Path, default=Path("outputs/startup.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.epochs = 1, 1
    if args.reps < 1 or args.epochs < 1:
        ap.error("--reps and --epochs must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    raw = find_raw(args.data_root)
    started = time.time()
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
              "python": sys.version.split()[0], "threads": args.threads, "reps": args.reps,
              "epochs": args.epochs, "data": str(raw), "quick": bool(args.quick),
              "load_average_start": load_average()}
    with tempfile.TemporaryDirectory(prefix="vae-startup-") as tmp:
        tmp = Path(tmp)
        data, tv = layouts(raw, tmp / "data")
        rows = commands(args, data, tv, tmp)
        seconds = measure(rows, args.reps, not args.quick, env, tmp, log)
    report["load_average_end"] = load_average()
    report["seconds"] = {k: spread(v) for k, v in seconds.items()}
    report["ratios"] = {k: {**spread(v), "target": t, "higher_is_better": hi}
                        for k, (v, t, hi) in ratios(seconds, args.epochs, args.precision).items()}
    report["wall_seconds"] = time.time() - started
    print(f"{args.reps} repetition(s), OMP_NUM_THREADS={args.threads}, {args.epochs} epoch(s), "
          f"Fashion-MNIST from {raw}; load average "
          f"{report['load_average_start'] or 0:.1f} -> {report['load_average_end'] or 0:.1f} "
          f"on {os.cpu_count()} cores")
    print(table(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({report['wall_seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
