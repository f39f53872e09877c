"""``python -m vae_train.encode run=<run dir> [split=test] [data=NAME] [k=0] [...]`` (a Hydra
app: options and defaults in ``configs/commands/encode.yaml``; ``--help`` lists them).

Every example of a split, encoded: the latent description the model gives it
(``model.latents``, what :meth:`vae_train.api.Trained.encode` returns: ``mean``/``logvar`` of
Gaussian latents, ``mean2``/``logvar2`` of a hierarchy's top layer, ``class_probs`` of M2,
``probs``/``mode`` of the Gumbel VAE, ``codes`` of the VQ-VAE, ``code`` wherever the model has
a continuous code), its label and index, and the per-example numbers of
:func:`vae_train.api.per_example` (``recon_error``; ``recon``, ``kl`` and ``neg_elbo`` for
models with a likelihood bound) and, with ``k`` > 0, the importance-sampled ``nll``
(:func:`vae_train.api.log_likelihood`). Written to

* ``<run>/encode/<split>.npz`` (``<data>_<split>.npz`` for ``data=NAME``; or ``out=``): one
  array per name, one row per example, plus ``classes`` and the settings as 0-d arrays;
* the same path with ``.csv``: the per-example numbers, one row per example;
* a TensorBoard embedding projector entry in the run directory (``projector_config.pbtxt``
  and ``projector/<tag>/``: the code vectors, their labels and class names, image
  thumbnails) for the first ``projector_n`` examples, and the mean numbers as scalars.

Every option is checked before the run is loaded (:data:`CHECKS`) and the output folder
must be writable before any work. Once the model is loaded, the memory of a batch (and of
``max_batch`` importance samples) and of the whole result (N x the arrays' row size, held in
memory until written) are estimated and refused in one line when they cannot fit.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vae_train.api import (Trained, data_option, default_max_batch, load,
                           log_likelihood_by_groups, per_example)
from vae_train.checks import BOOLEAN, Rule, one_of, optional
from vae_train.device import DEVICE_CHECKS
from vae_train.errors import UserError
from vae_train.files import atomic_write, check_writable, write_bytes
from vae_train.logging import TBLogger
from vae_train.memory import available_memory, bytes_per_pair, check_memory, human
from vae_train.models.base import Classifier, CodeGrid
from vae_train.options import PATH, SEED, check_options, check_output, count
from vae_train.patches import fast_linears
from vae_train.runs import hydra_app

USAGE = ("usage: python -m vae_train.encode run=<run dir> [split=test] [data=NAME] [k=0] "
         "[out=FILE.npz] [...] (--help lists every option)")
# Importance samples per example at most (as evaluate).
K_MAX = 10**6
# Examples in the projector at most: TensorBoard draws every point in the browser, and the
# sprite of their thumbnails must stay within SPRITE_MAX pixels a side.
PROJECTOR_MAX = 10_000
SPRITE_MAX = 8192
# The encoded result is held in memory until written: at most this share of what is free.
MEMORY_SHARE = 0.5
NAME = Rule(lambda v: isinstance(v, str) and v.strip() != "" and "/" not in v,
            "a data set option of configs/dataset (mnist, folder, arrays, ...)")
# The rules of the options (configs/commands/encode.yaml); all run before anything is loaded.
CHECKS = {"run": PATH, "checkpoint": PATH,
          "split": one_of("test", "val", "train"),
          "data": optional(NAME, "null (the run's own data) or a data set option of "
                                 "configs/dataset (mnist, folder, arrays, ...)"),
          "n": optional(count(1), "null (all) or an integer >= 1"),
          "batch_size": count(1),
          "k": count(0, K_MAX, f"an integer in [0, {K_MAX}] (0: no importance-sampled NLL)"),
          "max_batch": optional(count(1), "null or an integer >= 1"),
          "use_labels": BOOLEAN,
          "out": optional(Rule(lambda v: isinstance(v, str) and v.strip().endswith(".npz"),
                               "a path ending in .npz"),
                          "null (<run>/encode/<split>.npz) or a path ending in .npz"),
          "projector": BOOLEAN,
          "projector_n": count(1, PROJECTOR_MAX),
          "seed": SEED, "device": DEVICE_CHECKS["type"], "progress": BOOLEAN,
          "trust_run_code": BOOLEAN,
          "dataset.root": optional(PATH, "null or a path"),
          "dataset.path": optional(PATH, "null or a path"),
          "dataset.labels": optional(PATH, "null or a path"),
          "dataset.image_size": optional(count(1), "null or an integer >= 1"),
          "dataset.channels": optional(one_of(1, 3), "null, 1 or 3")}
# The dataset.* options that only a data= data set takes (the run's own data takes root).
DATA_ONLY = ("path", "labels", "image_size", "channels")


def output_path(args, run_dir: Path) -> Path:
    """The .npz file the options name (the .csv goes beside it)."""
    if args.out:
        return Path(str(args.out)).expanduser()
    stem = f"{args.data}_{args.split}" if args.data else str(args.split)
    return run_dir / "encode" / f"{stem}.npz"


def model_labels(run: Trained, classes: int, use_labels: bool):
    """``y -> labels for the model``, as :meth:`Trained._y` decides: conditional models need
    the labels; a model that predicts the class and can take it (M2) takes them with
    ``use_labels`` (when the data have classes); other models ignore them."""
    model = run.model
    takes = run.conditional or (use_labels and classes > 0 and isinstance(model, Classifier)
                                and not isinstance(model, CodeGrid))
    if not takes:
        return lambda y: None
    if run.conditional and classes == 0:
        raise UserError(f"{type(model).__name__} is conditional and this data set has no class "
                        "labels; encode a labelled data set")
    k = run.num_classes

    def of(y: torch.Tensor) -> torch.Tensor:
        if y.dim() == 1 and len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            bad = int(y[(y < 0) | (y >= k)][0])
            raise UserError(f"label {bad} is outside the model's classes 0..{k - 1}; "
                            "encode a data set with the run's classes")
        return y
    return of


def projector_vector(latents: dict[str, torch.Tensor], num_codes: int | None
                     ) -> tuple[str, torch.Tensor] | None:
    """The vector the projector shows for each example: ``code``; for a grid of discrete
    codes (VQ-VAE) the share of grid positions that use each code (B, num_codes), a
    bag-of-codes histogram; else the first layer's ``mean``."""
    if "code" in latents:
        return "code", latents["code"].float().flatten(1)
    if "codes" in latents and num_codes:
        c = latents["codes"].flatten(1)
        hist = torch.zeros(len(c), num_codes, device=c.device)
        hist.scatter_add_(1, c, torch.ones_like(c, dtype=hist.dtype))
        return "code use", hist / c.shape[1]
    if "mean" in latents:
        return "mean", latents["mean"].float().flatten(1)
    return None


def thumbnails(x: torch.Tensor, side: int) -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1] as uint8 thumbnails whose longer side is at most
    ``side`` pixels, on the CPU."""
    h, w = x.shape[-2:]
    if max(h, w) > side:
        scale = side / max(h, w)
        x = F.interpolate(x.float(), size=(max(1, round(h * scale)), max(1, round(w * scale))),
                          mode="area")
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def images_of(data_values: str, shape) -> bool:
    """Examples that are pictures: grey or colour images of stored pixels, not sequences (nor
    videos, (T, C, H, W), which get no thumbnails)."""
    if len(shape) != 3:
        return False
    c, h, w = shape
    return data_values in ("8bit", "binary", "unit") and c in (1, 3) and h > 1 and w > 1


class Result:
    """The encoded arrays, preallocated for ``n`` rows once the first batch shows their row
    shapes and types (so memory holds the result once, not once per batch and once more)."""

    def __init__(self, n: int):
        self.n = n
        self.arrays: dict[str, np.ndarray] = {}
        self.at = 0

    def add(self, rows: dict[str, torch.Tensor]) -> None:
        b = None
        for name, t in rows.items():
            a = t.detach().cpu().numpy()
            if name not in self.arrays:
                self.arrays[name] = np.empty((self.n, *a.shape[1:]), dtype=a.dtype)
            self.arrays[name][self.at:self.at + len(a)] = a
            b = len(a)
        self.at += b or 0


def row_bytes(run: Trained, x: torch.Tensor, y, y_of, k: int) -> int:
    """Bytes one example's row of the result takes (its latents, label, per-example numbers)."""
    y1 = y_of(y[:1])
    latents = run.model.latents(x[:1], y1)
    total = sum(t[0].numel() * t.element_size() for t in latents.values())
    total += 8 * (2 + (y[0].numel() if y.dim() > 1 else 1))      # index, label
    total += 4 * (5 + (k > 0))                                   # the scalars
    return total


def check_result_memory(n: int, per_row: int, extra: int, label: str) -> None:
    """Refuse, in one line, a result that cannot fit in ``MEMORY_SHARE`` of the free memory."""
    free = available_memory()
    need = n * per_row + extra
    if free is None or need <= MEMORY_SHARE * free:
        return
    most = max(1, int((MEMORY_SHARE * free - extra) // max(per_row, 1)))
    raise UserError(f"{label}: the encoded arrays need about {human(need)} of memory ({n} "
                    f"examples, about {human(per_row)} each), more than half of the "
                    f"{human(free)} available; use n={most} or less")


def class_name(classes: list[str], label) -> str:
    """The name of a label: a class, or the attributes set in a multi-hot label."""
    if np.ndim(label) == 0:
        i = int(label)
        return classes[i] if 0 <= i < len(classes) else ""
    return "|".join(classes[i] if i < len(classes) else str(i)
                    for i in np.flatnonzero(np.asarray(label)))


SCALARS = ("recon_error", "recon", "kl", "neg_elbo", "nll")


def csv_text(arrays: dict[str, np.ndarray], classes: list[str]) -> str:
    """The per-example numbers as CSV: index, label, class (when the data name classes),
    then the scalars the result holds."""
    labels = arrays["label"]
    multi = labels.ndim > 1
    names = [s for s in SCALARS if s in arrays]
    header = ["index"] + ([] if multi else ["label"]) + (
        ["class" if not multi else "attributes"] if classes or multi else []) + names
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    cols = [arrays[s] for s in names]
    for i in range(len(labels)):
        row = [int(arrays["index"][i])]
        if not multi:
            row.append(int(labels[i]))
        if classes or multi:
            row.append(class_name(classes, labels[i]))
        row += [f"{float(c[i]):.6g}" for c in cols]
        w.writerow(row)
    return buf.getvalue()


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` into ``path`` atomically (uncompressed: codes do not compress), refused
    before anything is written when the disk does not have room."""
    need = sum(a.nbytes for a in arrays.values()) + 1024 * len(arrays)
    try:
        free = shutil.disk_usage(next(p for p in [path.parent, *path.parents] if p.exists())
                                 ).free
    except (OSError, StopIteration):
        free = None
    if free is not None and need > free:
        raise UserError(f"no space left for {path}: about {human(need)} needed, {human(free)} "
                        "free; free some space or give out= elsewhere")
    atomic_write(path, lambda f: np.savez(f, **arrays))


# -- the TensorBoard projector ---------------------------------------------------------------
PBTXT = "projector_config.pbtxt"


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def projector_entries(text: str) -> list[str]:
    """The ``embeddings { ... }`` blocks of a projector config (balanced braces)."""
    out, depth, start = [], 0, None
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':                                  # skip a quoted string
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif ch == "{":
            if depth == 0:
                start = text.rfind("embeddings", 0, i)
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0 and start is not None and start >= 0:
                out.append(text[start:i + 1])
                start = None
        i += 1
    return out


def write_projector(log_dir: Path, tag: str, vectors: np.ndarray, metadata: list[list[str]],
                    header: list[str], sprite: torch.Tensor | None) -> Path:
    """A TensorBoard projector entry for ``vectors`` (n, D) under ``log_dir``:
    ``projector/<tag>/`` holds ``tensors.tsv``, ``metadata.tsv`` (a header row, then one row
    per vector) and, with thumbnails (n, C, h, w) uint8, ``sprite.png``; the entry is added to
    ``log_dir/projector_config.pbtxt`` (replacing an entry of the same tag, keeping others).
    Every file is written atomically. Returns the entry's folder."""
    from PIL import Image

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)
    folder = log_dir / "projector" / safe
    rel = f"projector/{safe}"
    buf = io.StringIO()
    np.savetxt(buf, vectors, fmt="%.6g", delimiter="\t")
    write_bytes(folder / "tensors.tsv", buf.getvalue().encode())
    clean = [[str(v).replace("\t", " ").replace("\n", " ") for v in row] for row in metadata]
    lines = ["\t".join(header)] + ["\t".join(row) for row in clean]
    write_bytes(folder / "metadata.tsv", ("\n".join(lines) + "\n").encode())
    entry = [f"  tensor_name: {_quote(tag)}",
             f"  tensor_shape: {vectors.shape[0]}", f"  tensor_shape: {vectors.shape[1]}",
             f"  tensor_path: {_quote(rel + '/tensors.tsv')}",
             f"  metadata_path: {_quote(rel + '/metadata.tsv')}"]
    if sprite is not None:
        n, c, h, w = sprite.shape
        cols = math.ceil(math.sqrt(n))            # a square grid, row by row (as the
        grid = torch.zeros(c, cols * h, cols * w, dtype=torch.uint8)   # projector reads it)
        for i in range(n):
            r, q = divmod(i, cols)
            grid[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = sprite[i]
        img = grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()
        png = io.BytesIO()
        Image.fromarray(img, mode="L" if c == 1 else "RGB").save(png, format="PNG")
        write_bytes(folder / "sprite.png", png.getvalue())
        entry += ["  sprite {", f"    image_path: {_quote(rel + '/sprite.png')}",
                  f"    single_image_dim: {w}", f"    single_image_dim: {h}", "  }"]
    config = log_dir / PBTXT
    kept = []
    if config.is_file():
        try:
            old = config.read_text()
        except (OSError, UnicodeDecodeError):
            old = ""
        mine = f"tensor_name: {_quote(tag)}"
        kept = [e for e in projector_entries(old) if mine not in e]
    blocks = kept + ["embeddings {\n" + "\n".join(entry) + "\n}"]
    write_bytes(config, ("\n".join(blocks) + "\n").encode())
    return folder


def projector_metadata(arrays: dict[str, np.ndarray], classes: list[str], n: int
                       ) -> tuple[list[str], list[list[str]]]:
    """The projector's table for the first ``n`` examples: index, label (a bit string for
    multi-hot labels), class name (when the data name classes) and the per-example numbers
    a point can be coloured by."""
    header = ["index", "label"] + (["class"] if classes else [])
    numbers = [s for s in ("neg_elbo", "nll", "recon_error") if s in arrays]
    rows = []
    for i in range(n):
        lab = arrays["label"][i]
        row = [str(int(arrays["index"][i])), str(int(lab)) if np.ndim(lab) == 0 else
               "".join(str(int(bit)) for bit in np.asarray(lab))]
        if classes:
            row.append(class_name(classes, lab))
        rows.append(row + [f"{float(arrays[s][i]):.4g}" for s in numbers])
    return header + numbers, rows


# -- the command ---------------------------------------------------------------------------
def check_dataset_options(args) -> dict:
    """The dataset.* overrides for ``data=`` (the run's own data takes only ``root``)."""
    given = {key: args.dataset[key] for key in ("root", *DATA_ONLY)
             if args.dataset.get(key) is not None}
    if not args.data:
        extra = [key for key in given if key != "root"]
        if extra:
            raise UserError(f"dataset.{extra[0]}= applies to another data set: give data=NAME "
                            "with it (data=folder dataset.path=DIR, data=arrays "
                            "dataset.path=FILE); the run's own data takes only dataset.root")
    return given


@hydra_app("encode", USAGE, path_keys=("run", "checkpoint", "out", "dataset.root",
                                       "dataset.path", "dataset.labels"))
def main(args):
    check_options(args, CHECKS)
    overrides = check_dataset_options(args)
    run_dir = Path(str(args.run)).expanduser()
    out = output_path(args, run_dir)
    label = f"out={args.out}" if args.out else f"out= (default: {out}; give out=FILE.npz to " \
                                               "write elsewhere)"
    check_output(out.parent, label)
    for path in (out, out.with_suffix(".csv")):
        if path.is_dir():
            raise UserError(f"{label}: {path} is a folder; move it away or give another out=")
    log_to_run = bool(args.projector)
    if (run_dir / ".hydra").is_dir():
        try:
            check_writable(run_dir)
        except UserError:
            log_to_run = False

    own_root = overrides.get("root") if not args.data else None
    if args.data:
        data_option(str(args.data))            # a data set option: checked before loading
    run = load(args.run, args.checkpoint, args.device, own_root,
               trust_run_code=args.trust_run_code)
    k = int(args.k)
    if k > 0 and not run.has_likelihood:
        raise UserError(f"k={k}: {type(run.model).__name__} has no likelihood bound, so it has "
                        "no importance-sampled NLL; use k=0 (its recon_error is written)")
    if args.data:
        dm = run.data_for(str(args.data), overrides)
    else:
        dm = run.data
    split = dm.eval_split(str(args.split))
    n = len(split) if args.n is None else min(int(args.n), len(split))
    if n < 1:
        raise UserError(f"split={args.split} of {args.data or 'the run'}'s data is empty; "
                        "choose another split")
    split = split.part(0, n)
    classes = list(dm.classes or [])
    y_of = model_labels(run, len(classes), bool(args.use_labels))
    bs = min(int(args.batch_size), n)

    max_batch = default_max_batch(run.device) if args.max_batch is None else int(args.max_batch)
    x1, y1 = next(iter(dm.eval_batches(split.part(0, 1), 1)))
    asked = {f"batch_size={bs}": (bs, "examples")}
    if k > 0:
        asked[f"max_batch={max_batch}"] = (max_batch, "(example, sample) pairs")
    check_memory(bytes_per_pair(run.model, x1, y_of(y1)), asked, run.device)
    with torch.no_grad():
        per_row = row_bytes(run, x1, y1, y_of, k)
    pn = min(int(args.projector_n), n) if log_to_run else 0
    thumbs = images_of(dm.values, tuple(dm.shape)) and pn > 0
    side = SPRITE_MAX // math.ceil(math.sqrt(max(pn, 1)))
    c, h, w = dm.shape[-3:]
    extra = pn * (c * min(h, side) * min(w, side) if thumbs else 0)
    check_result_memory(n, per_row, extra, f"split={args.split} ({n} examples)")

    result = Result(n)
    vectors, vector_name, sprite = [], None, []
    num_codes = run.model.num_codes if isinstance(run.model, CodeGrid) else None
    start = time.perf_counter()
    desc = f"encode k={k}" if k else "encode"
    with torch.no_grad(), fast_linears(run.model), tqdm(
            total=n, desc=desc, unit="ex", leave=False,
            disable=None if args.progress else True) as bar:
        at = 0
        for b, (x, y) in enumerate(dm.eval_batches(split, bs)):
            # Each batch's samples from seed + its number: the -ELBO's sample does not
            # depend on whether the NLL is estimated too (k), nor on the batches before.
            torch.manual_seed((int(args.seed) + b) % 2**63)
            ym = y_of(y)
            latents = run.model.latents(x, ym)
            rows = dict(latents)
            rows.update(per_example(run.model, x, ym))
            if k > 0:
                # -log p(x | y) for conditional models, else -log p(x) (M2: y summed out,
                # as in its -ELBO), as vae_train.api's log_prob and elbo
                yl = ym if run.conditional else None
                rows["nll"] = -log_likelihood_by_groups(run.model, x, yl, k, max_batch)
            rows["index"] = torch.arange(at, at + len(x))
            rows["label"] = y
            result.add(rows)
            if at < pn:
                take = min(pn - at, len(x))
                chosen = projector_vector({key: t[:take] for key, t in latents.items()},
                                          num_codes)
                if chosen is not None:
                    vector_name = chosen[0]
                    vectors.append(chosen[1].cpu().numpy())
                if thumbs:
                    sprite.append(thumbnails(x[:take], side))
            at += len(x)
            bar.update(len(x))
    seconds = time.perf_counter() - start

    arrays = result.arrays
    meta = {"split": np.array(str(args.split)), "data": np.array(str(args.data or
                                                                      dm.name or "")),
            "k": np.array(k), "checkpoint": np.array(str(args.checkpoint)),
            "epoch": np.array(-1 if run.epoch is None else int(run.epoch)),
            "model": np.array(type(run.model).__name__)}
    if classes:
        meta["classes"] = np.array(classes)
    write_npz(out, {**arrays, **meta})
    csv_path = out.with_suffix(".csv")
    write_bytes(csv_path, csv_text(arrays, classes).encode())

    wrote = [out, csv_path]
    notes = []
    if args.projector and not log_to_run:
        notes.append(f"{run.run_dir} cannot be written: no projector entry in its TensorBoard")
    elif args.projector and not vectors:
        notes.append(f"{type(run.model).__name__} gives no vector to show: no projector entry")
    elif args.projector:
        tag = f"encode/{args.data + '/' if args.data else ''}{args.split}"
        header, metadata = projector_metadata(arrays, classes, pn)
        folder = write_projector(run.run_dir, tag, np.concatenate(vectors), metadata, header,
                                 torch.cat(sprite) if sprite else None)
        tb = TBLogger(run.run_dir)
        means = {f"mean_{s}": float(arrays[s].astype(np.float64).mean())
                 for s in SCALARS if s in arrays}
        tb.scalars(tag, {"examples": n, **means}, run.step)
        tb.close()
        wrote.append(folder)
        notes.append(f"projector: {pn} examples' {vector_name} in {run.run_dir / PBTXT}"
                     f"{' with thumbnails' if sprite else ''} (tensorboard --logdir "
                     f"{run.run_dir}, Projector tab)")

    print(f"encoded {n} examples of {args.data or dm.name} ({args.split}) with "
          f"{type(run.model).__name__} in {seconds:.1f} s:")
    width = max(len(name) for name in arrays)
    for name, a in arrays.items():
        shape = "x".join(map(str, a.shape))
        mean = (f"  mean {float(a.astype(np.float64).mean()):.4g}"
                if name in SCALARS else "")
        print(f"  {name:<{width}}  {shape:<14} {a.dtype}{mean}")
    for note in notes:
        print(f"  note: {note}")
    for p in wrote:
        print(f"wrote {p}", file=sys.stderr)
    return {"n": n, "npz": str(out), "csv": str(csv_path), "seconds": seconds,
            "arrays": {name: tuple(a.shape) for name, a in arrays.items()}}


if __name__ == "__main__":
    main()
