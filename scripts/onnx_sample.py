"""Images from an exported ONNX decoder, with numpy, onnxruntime and Pillow only (no vae-train,
no torch): a standalone example of using ``python -m vae_train.export format=onnx``.

    python scripts/onnx_sample.py outputs/<run>/export/decoder.onnx --n 64 --out samples.png
    python scripts/onnx_sample.py .../decoder.onnx --label 3          # conditional models
    python scripts/onnx_sample.py .../decoder.onnx --classes 10       # M2/cvae: labels 0..9

Codes are drawn from the prior ``export.json`` (beside the graph) describes: z ~ N(0, I) for
``z``, uniform one-hot categories for the Gumbel VAE, uniform code indices for a VQ-VAE's
``codes`` (its PixelCNN prior is not exported). The images go into one PNG grid.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np


def prior_codes(sess, n: int, rng, record: dict | None, classes: int) -> dict:
    """A feed for the decoder's inputs: codes from the prior (as ``export.json`` describes it;
    without it, N(0, I)), and labels if it takes them."""
    priors = {i["name"]: i.get("prior", {}) for i in (record or {}).get("inputs", [])}
    feed = {}
    for inp in sess.get_inputs():
        shape = [n, *inp.shape[1:]]
        prior = priors.get(inp.name, {})
        if inp.name == "y":
            feed["y"] = (np.arange(n) % classes).astype(np.int64)
        elif inp.name == "codes":
            if "num_codes" not in prior:
                sys.exit("error: a code-index decoder needs its export.json beside it")
            # Uniform indices: a VQ-VAE's own prior (a PixelCNN) is not part of the graph.
            feed["codes"] = rng.integers(0, prior["num_codes"], shape).astype(np.int64)
        elif "num_categories" in prior:               # Gumbel VAE: one-hot (B, N*K)
            k = prior["num_categories"]
            c = rng.integers(0, k, (n, prior["num_latents"]))
            feed[inp.name] = np.eye(k, dtype=np.float32)[c].reshape(n, -1)
        else:
            feed[inp.name] = rng.standard_normal(shape, dtype=np.float32)
    return feed


def grid_image(images: np.ndarray, cols: int) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> one (rows*H, cols*W[, C]) uint8 picture (blank cells white)."""
    b, c, h, w = images.shape
    rows = math.ceil(b / cols)
    canvas = np.ones((rows * cols, c, h, w), dtype=np.float32)
    canvas[:b] = images
    grid = canvas.reshape(rows, cols, c, h, w).transpose(0, 3, 1, 4, 2)
    grid = grid.reshape(rows * h, cols * w, c)
    if c == 1:
        grid = grid[..., 0]
    return (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("decoder", help="decoder.onnx written by vae_train.export")
    p.add_argument("--n", type=int, default=64, help="images (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", type=int, default=None,
                   help="conditional decoders: this class for every image")
    p.add_argument("--classes", type=int, default=None,
                   help="conditional decoders: cycle labels 0..classes-1 (default: the "
                        "number export.json records, else 10)")
    p.add_argument("--out", default="samples.png")
    args = p.parse_args(argv)
    try:
        import onnxruntime as ort
        from PIL import Image
    except ImportError as e:
        sys.exit(f"error: {e.name} is not installed: pip install onnxruntime pillow numpy")
    path = Path(args.decoder)
    if not path.is_file():
        sys.exit(f"error: {path} does not exist (export with python -m vae_train.export "
                 "run=<run> format=onnx)")
    if args.n < 1:
        sys.exit("error: --n must be at least 1")
    record = None
    meta = path.with_name("export.json")
    if meta.is_file():
        try:
            record = json.loads(meta.read_text())["onnx"]["parts"]["decoder"]
        except (ValueError, KeyError):
            record = None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(args.seed)
    known = None                       # the classes export.json records for the label input
    for port in (record or {}).get("inputs", []):
        if port.get("name") == "y" and port.get("prior"):
            known = port["prior"].get("num_classes")
    classes = args.classes or known or 10
    if known and not 1 <= classes <= known:
        sys.exit(f"error: --classes {classes}: this decoder has {known} classes")
    if args.label is not None and known and not 0 <= args.label < known:
        sys.exit(f"error: --label {args.label} is outside this decoder's classes 0..{known - 1}")
    feed = prior_codes(sess, args.n, rng, record, max(1, classes))
    if "y" in feed and args.label is not None:
        feed["y"][:] = args.label
    images = sess.run(["images"], feed)[0]
    Image.fromarray(grid_image(images, math.ceil(math.sqrt(args.n)))).save(args.out)
    print(f"wrote {args.out}: {args.n} images of {'x'.join(map(str, images.shape[1:]))}")


if __name__ == "__main__":
    main()
