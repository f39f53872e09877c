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
* ``manifold.png``        2-D codes only: a grid of codes at Gaussian quantiles;
* videos (``model=video_vae``): ``reconstructions.png`` and ``samples.png`` as frame strips
  (one row per sequence, one column per frame; at most 16 sequences), ``content_swap.png``
  (groups of three rows: sequence A, sequence B, A's dynamics with B's content),
  ``dynamics.png`` (a test sequence, then its content with dynamics drawn from the prior),
  ``prediction.png`` (a test sequence, then its first ``prefix`` frames, dimmed, followed by
  the predicted frames) and ``samples.gif``, an animation of the samples;
* ``class_swap.png``      conditional models (cvae, a labelled folder, CelebA attributes) and
                          M2: ``swap`` test images, each followed by its style code (the
                          posterior mean given its own label) decoded as every class (for
                          attributes: with each attribute flipped): class-swap translation.

Every option is checked before the run is loaded (:data:`CHECKS`; a picture holds at most
``MAX_IMAGES`` images), ``out=`` must be writable before any work; once the run is loaded, the
test images the options draw from must exist, and the largest picture's decoded images must
fit in memory (:func:`vae_train.evaluate.bytes_per_pair`). A run directory that cannot be
written still gets its pictures into ``out=``, without the TensorBoard copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from vae_train.checks import BOOLEAN, number, optional
from vae_train.device import DEVICE_CHECKS
from vae_train.errors import UserError
from vae_train.memory import bytes_per_pair, check_memory
from vae_train.files import check_writable
from vae_train.logging import TBLogger
from vae_train.options import PATH, SEED, check_options, check_output, count
from vae_train.pictures import SampleOptions, sample_figures, save_figures
from vae_train.api import load
from vae_train.models.base import VideoModel
from vae_train.pictures.figures import VIDEO_ROWS
from vae_train.pictures.video import sample_videos, write_gif
from vae_train.runs import hydra_app

USAGE = ("usage: python -m vae_train.sample run=<run dir> [n=64] [seed=0] [checkpoint=best] "
         "[out=DIR] [...] (--help lists every option)")
# Images in one picture at most (a grid of 100 x 100; more is no picture anyone reads, and
# each decoded image costs memory).
MAX_IMAGES = 10_000
# Traversals beyond +-100 prior standard deviations decode the same saturated images (and
# overflow float32 for codes scaled by their spread).
SPAN_MAX = 100.0
# The rules of the options (configs/commands/sample.yaml); all run before anything is loaded.
CHECKS = {"run": PATH, "checkpoint": PATH, "out": optional(PATH, "null (<run>/samples) or a path"),
          "n": count(1, MAX_IMAGES), "dims": count(1, MAX_IMAGES),
          "steps": count(1, MAX_IMAGES - 1), "pairs": count(1, MAX_IMAGES),
          "interp_steps": count(1, MAX_IMAGES - 2), "image": count(0), "seed": SEED,
          "swap": count(0, MAX_IMAGES),
          "span": number(0, SPAN_MAX, low_open=True), "device": DEVICE_CHECKS["type"],
          "trust_run_code": BOOLEAN,
          "dataset.root": optional(PATH, "null or a path")}


def check_sizes(args) -> None:
    """The pictures the options ask for stay within ``MAX_IMAGES`` images each."""
    for name, rows, cols, what in (
            ("traversals.png", args.dims, args.steps + 1, f"dims={args.dims} x (steps="
                                                          f"{args.steps} + 1)"),
            ("interpolations.png", args.pairs, args.interp_steps + 2,
             f"pairs={args.pairs} x (interp_steps={args.interp_steps} + 2)")):
        if rows * cols > MAX_IMAGES:
            raise UserError(f"{what} = {rows * cols} images in {name} is too many: at most "
                            f"{MAX_IMAGES} images per picture")


def check_test_split(args, size: int) -> None:
    """The test images the options draw from exist."""
    if args.image >= size:
        raise UserError(f"image={args.image} is beyond the test split ({size} images: "
                        f"image=0..{size - 1})")
    if args.n > size:
        raise UserError(f"n={args.n} is invalid here: the reconstructions show n test images "
                        f"and the test split has {size}; use n<={size}")
    if 2 * args.pairs > size:
        raise UserError(f"pairs={args.pairs} needs {2 * args.pairs} test images and the test "
                        f"split has {size}; use pairs<={size // 2}")
    if args.swap > size:
        raise UserError(f"swap={args.swap} rows need {args.swap} test images and the test split "
                        f"has {size}; use swap<={size}")


def check_swap(args, targets: int) -> None:
    """The class-swap grid (``swap`` rows of 1 + ``targets`` images) stays within
    ``MAX_IMAGES``."""
    if args.swap * (targets + 1) > MAX_IMAGES:
        raise UserError(f"swap={args.swap} x ({targets} classes + 1) = "
                        f"{args.swap * (targets + 1)} images in class_swap.png is too many: at "
                        f"most {MAX_IMAGES} images per picture")


@hydra_app("sample", USAGE, path_keys=("run", "checkpoint", "out", "dataset.root"))
def main(args):
    check_options(args, CHECKS)
    check_sizes(args)
    # Where the pictures go, and whether the run's TensorBoard can take them: before any work.
    run_dir = Path(str(args.run)).expanduser()
    out = Path(str(args.out)).expanduser() if args.out else run_dir / "samples"
    check_output(out, f"out={args.out}" if args.out else f"out= (default: {out}; give "
                                                        "out=DIR to write elsewhere)")
    log_to_run = True
    if (run_dir / ".hydra").is_dir():
        try:
            check_writable(run_dir)
        except UserError:
            log_to_run = False
    run = load(args.run, args.checkpoint, args.device, args.dataset.root,
               trust_run_code=args.trust_run_code)
    test = run.data.test
    check_swap(args, test.y.shape[1] if test.y.dim() == 2 else run.num_classes)
    check_test_split(args, len(test))
    need = max(int(args.n), 2 * int(args.pairs), int(args.image) + 1, int(args.swap))
    video = isinstance(run.model, VideoModel)
    # videos: only the sequences drawn (each is T frames), not a thousand
    need = min(need, VIDEO_ROWS) if video else max(need, 1000)
    x, y = test.floats(need), test.y[:need]
    check_memory(bytes_per_pair(run.model, x, y),
                 {f"n={args.n}": (int(args.n), "images"),
                  f"steps={args.steps}": (int(args.steps), "images"),
                  f"interp_steps={args.interp_steps}": (int(args.interp_steps), "images")},
                 run.device)
    torch.manual_seed(int(args.seed))
    opts = SampleOptions(n=int(args.n), seed=int(args.seed), dims=int(args.dims),
                         steps=int(args.steps), span=float(args.span), image=int(args.image),
                         pairs=int(args.pairs), interp_steps=int(args.interp_steps),
                         swap=int(args.swap))
    figs, notes = sample_figures(run.model, x, y, opts)
    for note in notes:
        print(note, file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    paths = save_figures(figs, out)
    if video:
        gif = sample_videos(run.model, min(int(args.n), VIDEO_ROWS), int(args.seed))
        paths.append(write_gif(gif, out / "samples.gif"))
    if log_to_run:
        tb = TBLogger(run.run_dir)
        tb.images(figs, run.step, prefix="sample")
        tb.close()
    else:
        print(f"note: {run.run_dir} cannot be written: the pictures are not logged to its "
              "TensorBoard", file=sys.stderr)
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return [str(p) for p in paths]


if __name__ == "__main__":
    main()
