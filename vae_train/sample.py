"""``python -m vae_train.sample run=<run dir> [n=64] [seed=0] [...]`` (a Hydra app: options
and defaults in ``configs/commands/sample.yaml``; ``--help`` lists them).

Pictures from a trained run, written as PNG files into ``<run dir>/samples/`` (or ``out=``)
and to the run's TensorBoard under ``sample/``. Which pictures a model gets is chosen by
:func:`vae_train.pictures.sample_figures` through the model contract; for a Gaussian-latent
model:

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

from vae_train.checks import check_values, integer, number
from vae_train.device import DEVICE_CHECKS
from vae_train.errors import UserError
from vae_train.logging import TBLogger
from vae_train.pictures import SampleOptions, sample_figures, save_figures
from vae_train.runs import hydra_app, load_run

USAGE = ("usage: python -m vae_train.sample run=<run dir> [n=64] [seed=0] [checkpoint=best] "
         "[out=DIR] [...] (--help lists every option)")
# The rules of the options (configs/commands/sample.yaml).
CHECKS = {"n": integer(1), "dims": integer(1), "steps": integer(1), "pairs": integer(1),
          "interp_steps": integer(1), "image": integer(0), "seed": integer(0),
          "span": number(0, low_open=True), "device": DEVICE_CHECKS["type"]}


@hydra_app("sample", USAGE, path_keys=("run", "checkpoint", "out", "dataset.root"))
def main(args):
    check_values("", CHECKS, args)
    run = load_run(args.run, args.checkpoint, args.device, args.dataset.root)
    test = run.data.test
    need = max(int(args.n), 2 * int(args.pairs), int(args.image) + 1)
    if need > len(test):
        raise UserError(f"the test split has {len(test)} images; these options need {need}")
    x, y = test.floats(max(need, 1000)), test.y[:max(need, 1000)]
    torch.manual_seed(int(args.seed))
    opts = SampleOptions(n=int(args.n), seed=int(args.seed), dims=int(args.dims),
                         steps=int(args.steps), span=float(args.span), image=int(args.image),
                         pairs=int(args.pairs), interp_steps=int(args.interp_steps))
    figs, notes = sample_figures(run.model, x, y, opts)
    for note in notes:
        print(note, file=sys.stderr)
    out = Path(args.out) if args.out else run.run_dir / "samples"
    out.mkdir(parents=True, exist_ok=True)
    paths = save_figures(figs, out)
    tb = TBLogger(run.run_dir)
    tb.images(figs, run.step, prefix="sample")
    tb.close()
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return [str(p) for p in paths]


if __name__ == "__main__":
    main()
