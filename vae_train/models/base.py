"""The model contract: what the trainer, the objectives, ``evaluate`` and the pictures may ask of
a model, written as abstract base classes.

Every model is a :class:`Model` (the fields they all share). It declares each further
capability by inheriting that capability's class from this module, and callers ask for a
capability with ``isinstance`` (or the helpers at the end of this module); nothing is found
by probing whether an attribute happens to exist. A class that declares a capability and
leaves one of its abstract methods out cannot be instantiated (one line says which).

Shapes and units used throughout:

* ``x``: a batch of examples, (B, C, H, W) float: images in [0, 1]; sequences are stored as
  (B, 1, T, F) real values. ``y``: (B,) int64 class labels, or None.
* every log-density, KL and loss is in **nats per example**: summed over pixels and latent
  dimensions, one number per example (the objectives average over the batch).
* ``k``: importance samples per example; tensors with a sample dimension are (k, B, ...),
  sample-major.
* "mean images": the mean of p(x | z), (B, C, H, W) float, what pictures draw.

The capabilities:

=======================  ===========================================================================
:class:`Model`           every model: ``input_shape``, ``num_classes``, ``likelihood``,
                         ``conditional``, ``device``; ``reconstruct``, ``sample`` (mean images)
:class:`LatentVariable`  a likelihood bound: ``infer`` (log p(x|z), log p(z), log q(z|x), KL per
                         dimension) and ``latent_means``; the ELBO, beta-VAE and IWAE objectives
                         and evaluate's importance-sampled NLL are written once against it
:class:`HasCode`         a continuous code that pictures move through (traversals, interpolations,
                         the manifold, the class grid) and disentanglement metrics score
:class:`OwnsObjective`   trains its own objective (``loss_terms``) instead of the ``loss=`` group's
:class:`ParameterGroups` named parameter groups, one optimizer each, stepped in ``phases`` order
:class:`Staged`          training stages run one after the other (VQ-VAE: autoencoder, then prior)
:class:`ExtraMetrics`    numbers of its own for ``evaluate`` (sums over batches, then a summary)
:class:`Scheduled`       settings that follow the optimizer step (a temperature), logged
:class:`SemiSupervised`  learns from part of the labels (``dataset.labeled``)
:class:`Classifier`      predicts the class (q(y|x)); pictures draw an image as its class
:class:`CategoricalCode` N categorical latent variables of K classes (pictures: per-variable sweeps)
:class:`CodeGrid`        a grid of discrete codes (pictures: code maps); may have a prior to sample
:class:`SampledPrior`    a code whose prior is known by samples (pictures: scatter of codes)
:class:`VideoModel`      examples are videos (T, C, H, W): a content code per sequence, dynamics per
                         frame; content swap, dynamics sampling, next-frame prediction
:class:`Hierarchy`       several stochastic layers: the KL of each is logged (and can be floored or
                         balanced per layer); pictures vary one layer and hold the others
=======================  ===========================================================================
"""

from __future__ import annotations

from abc import ABC, ABCMeta, abstractmethod
from collections.abc import Callable
from typing import NamedTuple, TypedDict

import torch
from torch import nn

from vae_train.checks import Checked
from vae_train.distributions import BernoulliLikelihood
from vae_train.errors import UserError


class Inference(TypedDict):
    """What :meth:`LatentVariable.infer` returns for k posterior samples per example.

    ``log_px + log_pz - log_qz`` is the log importance weight log p(x, z) - log q(z | x)."""

    log_px: torch.Tensor    # (k, B)    log p(x | z), the model's pixel likelihood
    log_pz: torch.Tensor    # (k, B)    log p(z) under the prior, every stochastic layer
    log_qz: torch.Tensor    # (k, B)    log q(z | x), every stochastic layer
    kl_dims: torch.Tensor   # (k, B, D) KL per latent dimension (analytic where it has a
                            #           closed form), D over every stochastic layer
    x_out: torch.Tensor     # (k * B, *output_shape) decoder output (what ``likelihood.mean``
                            #           takes)


class Stage(NamedTuple):
    """One training stage: ``epochs`` epochs, each step running ``phases`` in order (a phase
    names a parameter group). A stage after the first starts from the best weights of the one
    before. A stage's length is a model option named ``<name>_epochs``."""

    name: str
    epochs: int
    phases: tuple[str, ...]


class Model(Checked, nn.Module, metaclass=ABCMeta):
    """Every model. Built from the ``model`` config node with the data's shape and classes;
    ``likelihood`` is p(x | z) per pixel (built from the ``loss`` node): ``log_prob(out, x)``
    in nats summed over pixels, ``mean(out)`` the mean image, where ``out`` is the decoder's
    output of ``output_shape`` per example (``likelihood.param_channels(C)`` channels: C for
    Bernoulli and Gaussian pixels, more for a mixture); decoders are built to that shape. ``conditional`` models take the labels y as an input."""

    config_group = "model"
    conditional: bool = False
    example_dims: int = 3     # dimensions of one example: 3 for (C, H, W); a video model: 4

    def __init__(self, input_shape, num_classes: int = 0, likelihood: nn.Module | None = None):
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != self.example_dims:
            raise UserError(_wrong_kind(type(self).__name__, self.example_dims, shape))
        self.input_shape = shape                                    # (C, H, W)
        self.num_classes = int(num_classes)
        self.likelihood = likelihood if likelihood is not None else BernoulliLikelihood()
        # What the decoder outputs per example: the likelihood's parameters per pixel (one
        # channel per image channel for Bernoulli and Gaussian; more for a mixture), frame by
        # frame for a video (T, C, H, W).
        *frames, c, h, w = self.input_shape
        self.output_shape = (*frames, int(self.likelihood.param_channels(c)), h, w)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @abstractmethod
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images (B, C, H, W) of x passed through the model (at the posterior mean)."""

    def latents(self, x: torch.Tensor, y: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """The latent description of each example, named tensors with the batch first (what
        ``vae_train.encode`` writes and ``Trained.encode`` returns): ``code`` for a model with
        a continuous code, ``codes`` for a grid of discrete codes. Families add their own
        (posterior means and log-variances, class probabilities)."""
        out = {}
        if isinstance(self, HasCode):
            out["code"] = self.code(x, y)
        if isinstance(self, CodeGrid):
            out["codes"] = self.codes(x)
        return out

    @abstractmethod
    def sample(self, n: int, y: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` mean images drawn from the prior (``generator``: a CPU generator, so drawing
        never moves the training RNG); conditional models draw class ``y[i]``."""


_KINDS = {3: "images (C x H x W)", 4: "videos (T x C x H x W)"}


def _wrong_kind(name: str, dims: int, shape: tuple) -> str:
    """The line refusing examples of the wrong number of dimensions for a model."""
    hint = ("use model=video_vae for videos" if len(shape) == 4 else
            "use dataset=moving_mnist (or arrays of N x T x C x H x W) for a video model")
    return (f"model {name} takes {_KINDS.get(dims, f'{dims}-D examples')}; this data set's "
            f"examples are {'x'.join(map(str, shape))} "
            f"({_KINDS.get(len(shape), f'{len(shape)}-D')}); {hint}")


class LatentVariable(ABC):
    """A latent-variable model with a likelihood bound."""

    @abstractmethod
    def infer(self, x: torch.Tensor, y: torch.Tensor | None = None, k: int = 1,
              analytic_kl: bool = True, step: int | None = None) -> Inference:
        """k samples z ~ q(z | x) per example and the densities at them (see
        :class:`Inference`). ``analytic_kl=False``: ``kl_dims`` is the single-sample estimate
        log q - log p. ``step`` is the optimizer step (schedules of the model itself)."""

    @abstractmethod
    def latent_means(self, x: torch.Tensor, y: torch.Tensor | None = None
                     ) -> list[torch.Tensor]:
        """E_q[z] of each stochastic layer, (B, D_l) each: active units are counted on them."""

    @property
    @abstractmethod
    def code_kl_slice(self) -> slice:
        """Which entries of ``kl_dims``' last dimension belong to the code layer."""


class HasCode(ABC):
    """A continuous code: the latent layer that pictures move through (the only layer of a
    one-layer VAE, the top layer of a hierarchy)."""

    @property
    @abstractmethod
    def code_dim(self) -> int:
        """The code's size D."""

    @abstractmethod
    def code(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The code of each example, (B, D): the posterior mean."""

    @abstractmethod
    def decode_code(self, c: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images (B, C, H, W) for codes ``c`` (B, D)."""


class OwnsObjective(ABC):
    """A model that trains its own objective; the ``loss`` group then supplies only the pixel
    likelihood (``loss=elbo``, the default, with its likelihood keys)."""

    objective_doc: str = ""   # one line: what it minimises (for the message refusing loss=)

    @abstractmethod
    def loss_terms(self, x: torch.Tensor, y: torch.Tensor | None = None, step: int | None = None,
                   train: bool = True, phase: str | None = None) -> dict[str, torch.Tensor]:
        """Named terms in nats per example (batch means); ``loss`` is minimised. In training
        ``phase`` names the parameter group stepped on this loss; ``phase=None`` is evaluation:
        every term, ``loss`` being the running stage's headline number."""


class ParameterGroups(ABC):
    """Named parameter groups, one optimizer each, stepped in the order of ``phases`` on every
    batch (``+optimizer.groups.<name>.<key>=...`` sets one group's optimizer)."""

    phases: tuple[str, ...] = ("main",)

    @abstractmethod
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """name -> parameters (a parameter may belong to several groups)."""


class Staged(ABC):
    """Training in stages, one after the other."""

    stage: str = ""

    @abstractmethod
    def stages(self, epochs: int) -> list[Stage]:
        """The stages for ``trainer.epochs=epochs`` (the first stage's length)."""

    def set_stage(self, name: str) -> None:
        """The trainer says which stage runs (evaluation follows it)."""
        self.stage = name


class ExtraMetrics(ABC):
    """Numbers of the model's own for ``evaluate``."""

    @abstractmethod
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums over the batch (tensors; added over batches in float64)."""

    @abstractmethod
    def evaluate_summary(self, sums: dict[str, torch.Tensor], n: int) -> dict:
        """The metrics from the sums over ``n`` examples (written to eval.json)."""


class Scheduled(ABC):
    """Settings of the model that are functions of the optimizer step."""

    @abstractmethod
    def schedule_terms(self, step: int | None) -> dict[str, float]:
        """Their values at ``step`` (logged beside the loss terms)."""


class SemiSupervised(ABC):
    """Learns from ``dataset.labeled`` labelled training examples (balanced over the classes,
    chosen with ``labeled_seed``) besides every training example without its label."""

    default_labeled: int = 100
    labeled_seed: int = 0

    @abstractmethod
    def use_labels(self, labeled, to_batch: Callable[[torch.Tensor], torch.Tensor],
                   num_train: int) -> None:
        """``labeled``: the labelled training examples, ``labeled.x`` (n, C, H, W) as the data
        stores them (uint8 images) and ``labeled.y`` (n,) int64, on the model's device;
        ``to_batch(x)`` makes stored examples a batch the model takes (floats in [0, 1],
        binarized afresh when the run is dynamically binarized); ``num_train``: training
        examples in all (labelled or not)."""


class Classifier(ABC):
    """Predicts the class of an example."""

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class, (B,) int64."""


class CategoricalCode(ABC):
    """A code of ``num_latents`` categorical variables with ``num_categories`` classes each."""

    num_latents: int
    num_categories: int

    @abstractmethod
    def mode(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class of each variable, (B, N)."""

    @abstractmethod
    def decode_classes(self, c: torch.Tensor) -> torch.Tensor:
        """Mean images for class indices ``c`` (B, N)."""

    @abstractmethod
    def variable_kl(self, x: torch.Tensor) -> torch.Tensor:
        """Mean KL(q(c_n | x) || p(c_n)) of each variable over a batch, (N,) nats."""


class CodeGrid(ABC):
    """A grid of discrete codes (indices into a codebook of ``num_codes``) per example."""

    num_codes: int

    @abstractmethod
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The code index at each grid position, (B, h, w) int64."""

    @property
    @abstractmethod
    def has_prior(self) -> bool:
        """Whether a prior over grids is trained, so that ``sample`` can draw."""


class SampledPrior(HasCode):
    """A code whose prior is known by its samples (not N(0, I))."""

    @abstractmethod
    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` codes drawn from the prior, (n, D), on the model's device."""

    @property
    @abstractmethod
    def prior_span(self) -> float:
        """Half the side of a square around 0 that holds nearly all of the prior's mass in the
        first two code dimensions (the range pictures draw)."""


class VideoModel(ABC):
    """A model of videos (examples (T, C, H, W)) with a per-sequence content code and
    per-frame dynamics."""

    frames: int     # T
    prefix: int     # frames given to predict the rest from, in evaluate and pictures

    @abstractmethod
    def swap(self, x_dynamics: torch.Tensor, x_content: torch.Tensor) -> torch.Tensor:
        """Mean frames (B, T, C, H, W): the dynamics of each sequence of ``x_dynamics`` drawn
        with the content of the same row of ``x_content``."""

    @abstractmethod
    def sample_dynamics(self, x_content: torch.Tensor, n: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean frames (B, n, T, C, H, W): each sequence's content with ``n`` dynamics drawn
        from the prior."""

    @abstractmethod
    def predict(self, x_prefix: torch.Tensor, steps: int) -> torch.Tensor:
        """Mean frames (B, steps, C, H, W) following the prefix (B, P, C, H, W)."""


class Hierarchy(ABC):
    """Several stochastic layers (groups), numbered from the data up: layer 1 is nearest x,
    layer L the top (the code). ``kl_dims`` of :meth:`LatentVariable.infer` holds them in that
    order."""

    @property
    @abstractmethod
    def layer_slices(self) -> list[slice]:
        """For each layer, bottom first, which entries of ``kl_dims``' last dimension are its."""

    @abstractmethod
    def layer_noise(self, n: int, generator: torch.Generator | None = None
                    ) -> list[torch.Tensor]:
        """Standard normal noise for ``n`` draws from the prior, one tensor per layer (bottom
        first), on the CPU, in the shapes :meth:`sample_from_noise` takes."""

    @abstractmethod
    def sample_from_noise(self, noise: list[torch.Tensor]) -> torch.Tensor:
        """Mean images drawn ancestrally from the prior, top layer first, each layer's z its
        prior mean plus its standard deviation times the given noise (so holding one layer's
        noise and changing another's varies only that layer's draw)."""


def layer_slices_of(model: nn.Module, kl_size: int) -> list[slice]:
    """The model's layers, or one layer of every latent dimension."""
    if isinstance(model, Hierarchy):
        return list(model.layer_slices)
    return [slice(0, kl_size)]


# -- what callers ask ------------------------------------------------------------------------
def stages_of(model: nn.Module, epochs: int) -> list[Stage]:
    """The model's stages, or one stage ``train`` of ``epochs`` epochs and its phases."""
    if isinstance(model, Staged):
        return [Stage(str(n), int(e), tuple(p)) for n, e, p in model.stages(epochs)]
    return [Stage("train", int(epochs), phases_of(model))]


def phases_of(model: nn.Module) -> tuple[str, ...]:
    return tuple(model.phases) if isinstance(model, ParameterGroups) else ("main",)


def parameter_groups_of(model: nn.Module, objective: nn.Module) -> dict[str, list]:
    """name -> parameters, one optimizer each: the model's groups, or one group ``main`` of
    every parameter of the model and the objective."""
    if isinstance(model, ParameterGroups):
        return {name: list(params) for name, params in model.parameter_groups().items()}
    return {"main": [*model.parameters(), *objective.parameters()]}


def training_plan(model: nn.Module, objective: nn.Module, epochs: int
                  ) -> tuple[list[Stage], dict[str, list]]:
    """(stages, parameter groups) the trainer follows; a phase that names no parameter group
    is one line saying which."""
    stages, groups = stages_of(model, epochs), parameter_groups_of(model, objective)
    for stage in stages:
        for phase in stage.phases:
            if phase not in groups:
                raise UserError(f"model {type(model).__name__}: phase {phase!r} of stage "
                                f"{stage.name!r} is none of its parameter groups "
                                f"({', '.join(groups)}); set its phases to group names")
    return stages, groups


def set_stage(model: nn.Module, name: str) -> None:
    if isinstance(model, Staged):
        model.set_stage(name)


def schedule_terms(model: nn.Module, step: int | None) -> dict[str, float]:
    return dict(model.schedule_terms(step)) if isinstance(model, Scheduled) else {}
