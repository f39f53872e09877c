"""Which pictures a model gets, chosen through the model contract (``vae_train.models.base``):
the grids drawn during training and at its end (:func:`training_figures`) and the fuller set of
``python -m vae_train.sample`` (:func:`sample_figures`).

By capability, the first that applies:

* a grid of discrete codes (``CodeGrid``, VQ-VAE): reconstructions, code maps, and samples
  once a prior is trained;
* a categorical code (``CategoricalCode``, Gumbel-softmax): reconstructions at the most
  probable code, samples, and sweeps of each variable through its classes;
* a prior known by samples (``SampledPrior``, AAE): grids over the prior's range and the
  scatter plot of codes over prior samples; traversals in units of the codes' spread;
* a classifier with a code (``Classifier``, ``HasCode``, ``LatentVariable``: M2): every image
  drawn as the class it is predicted to be;
* videos (``VideoModel``, examples (T, C, H, W)): frame strips (one row per sequence, one
  column per frame) of reconstructions and samples; ``sample`` adds the content-swap,
  dynamics-sampling and next-frame-prediction strips (and ``samples.gif``, written by
  ``vae_train.sample``);
* sequence data (examples of shape (1, T, 1)): line plots instead of images;
* otherwise: reconstructions and samples; with a continuous code (``HasCode``) traversals of
  the most-used code dimensions (largest mean KL), interpolations, the class grid for
  conditional models and the manifold for 2-D codes; for conditional models (and M2) the
  class-swap grid: each test image's style code decoded as every class; for several
  stochastic layers (``Hierarchy``) a row per layer that varies that layer alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from vae_train.models.base import (CategoricalCode, Classifier, CodeGrid, HasCode, Hierarchy,
                                   LatentVariable, SampledPrior, VideoModel)
from vae_train.pictures.grids import (categorical_traversals, class_grid, class_swap, code_map,
                                      interpolations, layer_variations, manifold,
                                      prior_samples, reconstruction_grid, traversals)
from vae_train.pictures.image import save_image
from vae_train.pictures.video import video_sample_figures, video_training_figures
from vae_train.pictures.plots import (interpolation_plots, latent_scatter,
                                      reconstruction_plots, sample_plots, traversal_plots)


# Sequences in one video strip picture (rows of T frames each) at most.
VIDEO_ROWS = 16


@dataclass(frozen=True)
class SampleOptions:
    """What ``python -m vae_train.sample`` draws: ``n`` samples and reconstructions, traversal
    rows of the ``dims`` most-used code dimensions with ``steps`` columns over +-``span``,
    starting from test image ``image``; ``pairs`` interpolation rows of ``interp_steps``;
    ``swap`` rows of class-swap translation (conditional models and M2; 0: none)."""

    n: int = 64
    seed: int = 0
    dims: int = 10
    steps: int = 9
    span: float = 3.0
    image: int = 0
    pairs: int = 8
    interp_steps: int = 10
    swap: int = 8


class GivenClass:
    """A classifier-model seen as a conditional model, so that the shared grids pass it the
    class explicitly (each image as the class it is predicted to be)."""

    conditional = True

    def __init__(self, model):
        self._m = model
        self.num_classes, self.code_dim = model.num_classes, model.code_dim

    @property
    def device(self) -> torch.device:
        return self._m.device

    def code(self, x, y):
        return self._m.code(x, y)

    def decode_code(self, c, y):
        return self._m.decode_code(c, y)

    def reconstruct(self, x, y):
        return self._m.reconstruct(x, y)


def is_classifier_with_code(model) -> bool:
    """A classifier with a continuous code and a bound (M2): drawn at its predicted classes."""
    return all(isinstance(model, c) for c in (Classifier, HasCode, LatentVariable))


def is_sequence(model) -> bool:
    """Sequence examples, (1, T, 1): drawn as line plots."""
    return model.input_shape[2] == 1 and model.input_shape[1] > 1 and isinstance(model, HasCode)


@torch.no_grad()
def code_kl(model, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Mean KL per code dimension over a batch of examples."""
    return model.infer(x, y, k=1, analytic_kl=True)["kl_dims"][0][:, model.code_kl_slice].mean(0)


def _scatter(model, x, y) -> torch.Tensor:
    prior = model.prior_sample(len(x), torch.Generator().manual_seed(0))
    return latent_scatter(model.code(x)[:, :2], y, prior[:, :2], span=model.prior_span)


def _most_used(values: torch.Tensor, dims: int, notes: list[str] | None = None) -> list[int]:
    """The ``dims`` largest of ``values``, largest first; all of them when the code has fewer
    dimensions than asked for (said in ``notes``)."""
    if notes is not None and dims > len(values):
        notes.append(f"dims={dims}: the code has {len(values)} dimensions; traversing all "
                     f"{len(values)}")
    return torch.argsort(values, descending=True)[:dims].tolist()


def _described(what: str, order: list[int], values: torch.Tensor) -> str:
    return f"{what}: " + ", ".join(f"{d} ({values[d]:.2f})" for d in order)


@torch.no_grad()
def training_figures(model, x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0) -> dict:
    """The grids shown during training and written at its end, for the first ``n`` of a
    fixed batch (x, y): name -> (3, H, W) float image in [0, 1]."""
    was_training = model.training
    model.eval()
    try:
        return _training_figures(model, x[:n], y[:n], n, seed)
    finally:
        model.train(was_training)


def _training_figures(model, x, y, n, seed) -> dict:
    if isinstance(model, VideoModel):
        return video_training_figures(model, x, seed, min(n, 8))
    if isinstance(model, CodeGrid):
        out = {"reconstructions": reconstruction_grid(model, x, y),
               "code_maps": code_map(model, x[:32])}
        if model.has_prior:
            out["samples"] = prior_samples(model, n, seed)
        return out
    if isinstance(model, CategoricalCode):
        return {"reconstructions": reconstruction_grid(model, x, None),
                "samples": prior_samples(model, n, seed)}
    if isinstance(model, SampledPrior):
        out = {"reconstructions": reconstruction_grid(model, x, y),
               "samples": prior_samples(model, n, seed)}
        if model.code_dim == 2:
            out["manifold"] = manifold(model, span=model.prior_span)
        out["latent_scatter"] = _scatter(model, x, y)
        return out
    if is_classifier_with_code(model):
        view = GivenClass(model)
        return {"reconstructions": reconstruction_grid(view, x, model.predict(x)),
                "samples": prior_samples(model, n, seed),
                "class_samples": class_grid(view, seed=seed)}
    if is_sequence(model):
        return {"reconstructions": reconstruction_plots(model, x, y),
                "samples": sample_plots(model, n, seed)}
    out = {"reconstructions": reconstruction_grid(model, x, y),
           "samples": prior_samples(model, n, seed)}
    if isinstance(model, HasCode):
        if model.conditional:
            out["class_samples"] = class_grid(model, seed=seed)
        if model.code_dim == 2:
            out["manifold"] = manifold(model)
    return out


@torch.no_grad()
def sample_figures(model, x: torch.Tensor, y: torch.Tensor, opts: SampleOptions
                   ) -> tuple[dict, list[str]]:
    """``sample``'s pictures from test examples (x, y): (name -> image, notes for the user)."""
    model.eval()
    n, i, seed = opts.n, opts.image, opts.seed
    notes: list[str] = []
    if isinstance(model, VideoModel):
        if n > VIDEO_ROWS:
            notes.append(f"n={n}: video strips show at most {VIDEO_ROWS} sequences")
        return video_sample_figures(model, x, min(n, VIDEO_ROWS), seed,
                                    pairs=min(opts.pairs, 4)), notes
    if isinstance(model, CodeGrid):
        figs = {"reconstructions": reconstruction_grid(model, x[:n], y[:n]),
                "code_maps": code_map(model, x[:32])}
        if model.has_prior:
            figs["samples"] = prior_samples(model, n, seed)
            return figs, []
        return figs, ["no prior trained (model.prior_epochs=0): no samples.png; train one "
                      "with python -m vae_train resume=<run> model.prior_epochs=10"]
    if isinstance(model, CategoricalCode):
        kl = model.variable_kl(x).cpu()
        order = _most_used(kl, opts.dims, notes)
        note = _described("traversed variables (mean KL, nats; at most log K = "
                          f"{math.log(model.num_categories):.2f})", order, kl)
        return {"samples": prior_samples(model, n, seed),
                "reconstructions": reconstruction_grid(model, x[:n], None),
                "traversals": categorical_traversals(model, x[i:i + 1], order)}, [note, *notes]
    if isinstance(model, SampledPrior):
        std = model.code(x).std(dim=0)
        order = _most_used(std, opts.dims, notes)
        figs = {"samples": prior_samples(model, n, seed),
                "reconstructions": reconstruction_grid(model, x[:n], y[:n]),
                "traversals": traversals(model, x[i:i + 1], None, order, opts.steps, opts.span,
                                         scale=std),
                "interpolations": interpolations(model, x, y, opts.pairs, opts.interp_steps),
                "latent_scatter": _scatter(model, x, y)}
        if model.code_dim == 2:
            figs["manifold"] = manifold(model, span=model.prior_span)
        return figs, notes
    if is_classifier_with_code(model):
        figs = _training_figures(model, x[:n], y[:n], n, seed)
        pred = model.predict(x)
        view = GivenClass(model)
        kl = code_kl(model, x, pred).cpu()           # q(z | x, y) at the predicted class
        order = _most_used(kl, opts.dims, notes)
        figs["traversals"] = traversals(view, x[i:i + 1], pred[i:i + 1], order, opts.steps,
                                        opts.span)
        figs["interpolations"] = interpolations(view, x, pred, opts.pairs, opts.interp_steps)
        if opts.swap and y.dim() == 1:                  # its style, drawn as every class
            figs["class_swap"] = class_swap(view, x[:opts.swap], y[:opts.swap])
        return figs, [_described("traversed code dimensions (mean KL, nats)", order, kl), *notes]
    if not (isinstance(model, HasCode) and isinstance(model, LatentVariable)):
        return {"samples": prior_samples(model, n, seed),
                "reconstructions": reconstruction_grid(model, x[:n], y[:n])}, []
    kl = code_kl(model, x, y if model.conditional else None).cpu()
    order = _most_used(kl, opts.dims, notes)
    notes.insert(0, _described("traversed code dimensions (mean KL, nats)", order, kl))
    if is_sequence(model):
        return {"samples": sample_plots(model, n, seed),
                "reconstructions": reconstruction_plots(model, x[:n], y[:n]),
                "traversals": traversal_plots(model, x[i:i + 1], y[i:i + 1], order, opts.steps,
                                              opts.span),
                "interpolations": interpolation_plots(model, x, y, opts.pairs,
                                                      opts.interp_steps)}, notes
    figs = {"samples": prior_samples(model, n, seed),
            "reconstructions": reconstruction_grid(model, x[:n], y[:n]),
            "traversals": traversals(model, x[i:i + 1], y[i:i + 1], order, opts.steps,
                                     opts.span),
            "interpolations": interpolations(model, x, y, opts.pairs, opts.interp_steps)}
    if model.conditional:
        figs["class_samples"] = class_grid(model, seed=seed)
        if opts.swap:
            figs["class_swap"] = class_swap(model, x[:opts.swap], y[:opts.swap])
    if model.code_dim == 2:
        figs["manifold"] = manifold(model)
    if isinstance(model, Hierarchy):        # vary one layer, hold the others
        figs["layer_variations"] = layer_variations(model, n=opts.steps + 1, seed=seed)
    return figs, notes


def save_figures(figs: dict, folder) -> list[Path]:
    """Each figure as ``<folder>/<name>.png``."""
    paths = []
    for name, img in figs.items():
        path = Path(folder) / f"{name}.png"
        save_image(img, str(path))
        paths.append(path)
    return paths
