"""``python -m vae_train.sample run=<run dir> [n=64] [seed=0] [...]``

Pictures from a trained run, written as PNG files into ``<run dir>/samples/`` (or ``out=``)
and to the run's TensorBoard under ``sample/``:

* ``samples.png``         draws from the prior (for conditional models, labels cycle 0, 1, ...);
* ``class_samples.png``   conditional models: one row per class, each column one shared z;
* ``reconstructions.png`` test images above their reconstructions;
* ``traversals.png``      one row per code dimension, the most-used first (largest mean KL on
                          the test images), each swept over +-``span`` prior standard deviations
                          around the code of test image ``image``; the image itself at the left;
* ``interpolations.png``  pairs of test images with the decoded straight line between their codes;
* ``manifold.png``        2-D codes only: a grid of codes at Gaussian quantiles.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from vae_train.errors import UserError
from vae_train.logging import TBLogger
from vae_train.pictures import (class_grid, interpolations, manifold, prior_samples,
                                reconstruction_grid, save_figures, traversals)
from vae_train.runs import command, load_run, parse_args

DEFAULTS = {
    "run": "???",
    "n": 64,             # prior samples (and reconstructions)
    "seed": 0,
    "checkpoint": "best",
    "dims": 10,          # traversal rows: the most-used code dimensions
    "steps": 9,          # traversal columns
    "span": 3.0,         # traversal range in prior standard deviations
    "image": 0,          # which test image the traversals start from
    "pairs": 8,          # interpolation rows
    "interp_steps": 10,  # interpolation columns between the two images
    "out": None,         # folder for the PNGs (default: <run dir>/samples)
    "device": "auto",
    "dataset.root": None,  # where the data is now, if it moved since training
}
USAGE = ("usage: python -m vae_train.sample run=<run dir> [n=64] [seed=0] [checkpoint=best] "
         "[dims=10] [steps=9] [span=3.0] [image=0] [pairs=8] [interp_steps=10] [out=DIR] "
         "[device=auto] [dataset.root=PATH]")


@torch.no_grad()
def code_kl(model, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Mean KL per code dimension over a batch of images."""
    return model.infer(x, y, k=1, analytic_kl=True)["kl_dims"][0][:, model.code_kl_slice].mean(0)


def default_sample_figures(model, x, y, args) -> dict:
    """Samples, reconstructions, traversals of the most-used code dimensions, interpolations,
    and the class grid / manifold where they apply."""
    kl = code_kl(model, x, y if model.conditional else None).cpu()
    order = torch.argsort(kl, descending=True)[:int(args.dims)].tolist()
    i = int(args.image)
    figs = {
        "samples": prior_samples(model, int(args.n), int(args.seed)),
        "reconstructions": reconstruction_grid(model, x[:args.n], y[:args.n]),
        "traversals": traversals(model, x[i:i + 1], y[i:i + 1], order, int(args.steps),
                                 float(args.span)),
        "interpolations": interpolations(model, x, y, int(args.pairs), int(args.interp_steps)),
    }
    if model.conditional:
        figs["class_samples"] = class_grid(model, seed=int(args.seed))
    if model.code_dim == 2:
        figs["manifold"] = manifold(model)
    print("traversed code dimensions (mean KL, nats): "
          + ", ".join(f"{d} ({kl[d]:.2f})" for d in order), file=sys.stderr)
    return figs


@command
def main(argv):
    args = parse_args(argv, DEFAULTS, USAGE)
    for key in ("n", "dims", "steps", "pairs", "interp_steps"):
        if int(args[key]) < 1:
            raise UserError(f"{key}={args[key]} is invalid: it must be a positive integer")
    run = load_run(args.run, args.checkpoint, args.device, args["dataset.root"])
    model, test = run.model, run.data.test
    need = max(int(args.n), 2 * int(args.pairs), int(args.image) + 1)
    if need > len(test):
        raise UserError(f"the test split has {len(test)} images; these options need {need}")
    x, y = test.floats(max(need, 1000)), test.y[:max(need, 1000)]
    torch.manual_seed(int(args.seed))

    if hasattr(model, "sample_figures"):  # a model with its own pictures
        figs = model.sample_figures(x, y, args)
    else:
        figs = default_sample_figures(model, x, y, args)
    out = Path(args.out) if args.out else run.run_dir / "samples"
    out.mkdir(parents=True, exist_ok=True)
    paths = save_figures(figs, out)
    tb = TBLogger(run.run_dir)
    tb.images(figs, run.step, prefix="sample")
    tb.close()
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return paths


if __name__ == "__main__":
    main()
