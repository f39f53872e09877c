"""The Python API: a trained run as an object to use.

    import vae_train
    m = vae_train.load("outputs/2026-11-30/12-00-00")        # best checkpoint, best device
    z = m.encode(images)["mean"]                               # posterior means (B, D)
    x = m.decode(z)                                            # mean images (B, C, H, W)
    m.reconstruct(images); m.sample(16); m.log_prob(images, k=1000)
    m.interpolate(images[0], images[1], steps=10)

:func:`load` returns a :class:`Trained`: the model (in eval mode, on the chosen device) with
the data transforms of its run (:meth:`Trained.prepare`: uint8 or float images, one or a
batch, channels first or last, binarized as the run was). Every method takes and returns
torch tensors (numpy arrays are accepted as input) and runs without gradients.

The commands ``evaluate``, ``sample``, ``encode``, ``score`` and ``export`` load runs through
this module and compute with its functions (:func:`log_likelihood`, :func:`per_example`), so
what a script gets from the API is what the commands report.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from vae_train.errors import UserError
from vae_train.patches import ONEDNN_TILE, fast_linears
from vae_train.models.base import CategoricalCode, Classifier, CodeGrid, HasCode, LatentVariable

__all__ = ["Trained", "default_max_batch", "load", "log_likelihood",
           "log_likelihood_by_groups", "per_example", "sample_chunks"]


def sample_chunks(k: int, chunk: int) -> list[int]:
    """k split into the fewest chunks of at most ``chunk``, as equal as they can be (one
    shape for all but the last few calls: oneDNN and the allocator reuse what they made)."""
    n = -(-k // max(1, chunk))
    return [k // n + (i < k % n) for i in range(n)]


def default_max_batch(device) -> int:
    """(example, sample) pairs per decoder call: cache-sized tiles on a CPU, where the
    784-wide elementwise work of the likelihood is memory-bound above a few MB (for the
    784-400-20 MLP VAE at k=5000 on a 2-core AMD EPYC, per example: 1024 to 4096 pairs within
    5% of each other, 256 25% slower, 16384 2.2x); large ones on an accelerator."""
    return ONEDNN_TILE if torch.device(device).type == "cpu" else 16384


@torch.inference_mode()
def log_likelihood(model, x: torch.Tensor, y: torch.Tensor | None, k: int,
                   max_batch: int = 16384) -> torch.Tensor:
    """The k-sample importance-weighted estimate of log p(x) per example (B,), in nats:

        log p(x) ~ logsumexp_i(log p(x, z_i) - log q(z_i | x)) - log k,   z_i ~ q(z | x)

    in chunks of samples for all of ``x`` at once (at most ``max_batch`` (example, sample)
    pairs, at least one sample); a logsumexp over the chunks' logsumexps is exact."""
    parts = []
    for kk in sample_chunks(k, max(1, max_batch // len(x))):
        out = model.infer(x, y, k=kk, analytic_kl=False)
        parts.append(torch.logsumexp(out["log_px"] + out["log_pz"] - out["log_qz"], dim=0))
    return torch.logsumexp(torch.stack(parts), dim=0) - math.log(k)


def log_likelihood_by_groups(model, x: torch.Tensor, y: torch.Tensor | None, k: int,
                             max_batch: int) -> torch.Tensor:
    """:func:`log_likelihood` per example (B,) over a batch of any size: a few examples at a
    time (``max_batch // k``, at least one), each with all its samples, so the encoder runs
    once per example and chunk and a decoder call stays within ``max_batch`` pairs."""
    group = max(1, int(max_batch) // int(k))
    return torch.cat([log_likelihood(model, x[i:i + group], None if y is None
                                     else y[i:i + group], int(k), int(max_batch))
                      for i in range(0, len(x), group)])


@torch.no_grad()
def per_example(model, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
    """Per-example numbers every model has, each (B,) float: ``recon_error`` (the summed
    squared error between x and its reconstruction); for a model with a likelihood bound also
    ``recon`` (-log p(x | z), one posterior sample), ``kl`` and ``neg_elbo`` = recon + kl, in
    nats (the KL analytic where it has a closed form)."""
    y_in = y if model.conditional else None
    rec = model.reconstruct(x, y_in).float()
    out = {"recon_error": (rec - x.float()).pow(2).flatten(1).sum(1)}
    if isinstance(model, LatentVariable):
        one = model.infer(x, y_in, k=1, analytic_kl=True)
        recon = -one["log_px"][0].float()
        kl = one["kl_dims"][0].float().sum(-1)
        out.update(recon=recon, kl=kl, neg_elbo=recon + kl)
    return out


def _family(model) -> str:
    return type(model).__name__


class Trained:
    """A trained model with its run's transforms. Attributes: ``model`` (the torch module, eval
    mode), ``cfg`` (the run's composed config), ``data`` (the run's data splits), ``run_dir``, ``device``, ``input_shape`` (C, H, W), ``num_classes``,
    ``conditional``, ``classes`` (names, or None), ``epoch`` and ``step`` of the checkpoint.
    Loading reads the run's data set (the model's shape and classes come from it), so the
    data must be where the run read it, or at ``data_root``."""

    def __init__(self, loaded):
        self._run = loaded
        self.model = loaded.model
        self.cfg = loaded.cfg
        self.run_dir = loaded.run_dir
        self.device = loaded.device
        self.objective = loaded.objective
        self.state = loaded.state
        self.input_shape = tuple(self.model.input_shape)
        self.num_classes = int(self.model.num_classes)
        self.conditional = bool(self.model.conditional)
        self.binarize = str(loaded.data.binarize)
        self.values = loaded.data.values
        self.classes = loaded.data.classes
        self.stats = loaded.data.stats

    def __repr__(self) -> str:
        return (f"Trained({_family(self.model)} {self.input_shape}, epoch {self.epoch}, "
                f"{self.run_dir}, {self.device})")

    @property
    def data(self):
        """The run's data (:class:`vae_train.data.DataModule`: ``train``, ``val``, ``test``)."""
        return self._run.data

    @property
    def epoch(self):
        return self.state.get("epoch")

    @property
    def step(self) -> int:
        return int(self.state.get("step", 0))

    @property
    def has_likelihood(self) -> bool:
        """Whether the model has a likelihood bound (``log_prob``, ``elbo``)."""
        return isinstance(self.model, LatentVariable)

    # -- input -------------------------------------------------------------------------------
    def prepare(self, x, binarize_seed: int = 0) -> torch.Tensor:
        """Images (or sequences) as the model takes them: a float batch (B, C, H, W) on the
        model's device. Takes a tensor or numpy array, one example or a batch, channels
        first or (for images) last; uint8 pixels become [0, 1]; floats are taken as they
        are (standardised data: already standardised, with ``self.stats``). A run trained on
        binarized images gets binary pixels (drawn with ``binarize_seed``)."""
        t = torch.as_tensor(np.array(x) if not isinstance(x, torch.Tensor) else x)
        shape = self.input_shape
        if t.dim() == len(shape) - 1 and shape[0] == 1 and tuple(t.shape) == shape[1:]:
            t = t.unsqueeze(0)                                  # one (H, W) grey image
        if t.dim() == len(shape) and shape[0] == 1 and tuple(t.shape[1:]) == shape[1:]:
            t = t.unsqueeze(1)                                  # (B, H, W) grey images
        if t.dim() == len(shape):
            t = t.unsqueeze(0)                                  # one example
        if (t.dim() == 4 and tuple(t.shape[1:]) != shape
                and tuple(t.shape[1:]) == (*shape[1:], shape[0])):
            t = t.permute(0, 3, 1, 2)                           # channels last
        if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != shape:
            raise UserError(f"input of shape {tuple(t.shape)} does not fit this model: it takes "
                            f"(B, {', '.join(map(str, shape))}) (one example or a batch; "
                            "images may have their channels last)")
        if t.dtype == torch.uint8:
            x01 = t.float().div_(255)
        elif t.is_floating_point():
            x01 = t.float()
        else:
            raise UserError(f"input of type {t.dtype}: give uint8 pixels (0..255) or floats")
        if self.binarize != "none" and self.values in ("8bit", "binary"):
            g = torch.Generator().manual_seed(int(binarize_seed))
            u = torch.rand(x01.shape, generator=g).to(x01.device)
            x01 = (u < x01.clamp(0, 1)).float()
        return x01.to(self.device)

    def _labels(self, y, n: int, required: bool) -> torch.Tensor | None:
        if y is None:
            if required:
                raise UserError(f"{_family(self.model)} is conditional: give the class labels "
                                f"y (0..{self.num_classes - 1})")
            return None
        t = torch.as_tensor(np.array(y) if not isinstance(y, torch.Tensor) else y)
        if t.is_floating_point() and not bool((t == t.round()).all()):
            raise UserError(f"labels must be whole numbers (class indices), not {t.flatten()[:3]}")
        if t.dim() == 0 or (t.dim() == 1 and len(t) == 1):
            t = t.reshape(1).expand(n)                    # one label for every example
        if t.dim() == 2 and t.shape[1] == 1 and not self._multi_hot():
            t = t[:, 0]                                   # (B, 1) class labels
        if t.dim() == 1:
            t = t.long()
            if len(t) != n:
                raise UserError(f"{len(t)} labels for {n} examples")
            k = max(self.num_classes, 1)
            bad = t[(t < 0) | (t >= k)]
            if len(bad):
                raise UserError(f"label {int(bad[0])} is outside 0..{k - 1}")
        elif not (t.dim() == 2 and len(t) == n and self._multi_hot()):
            raise UserError(f"labels of shape {tuple(t.shape)}: give one class index per "
                            f"example, ({n},)" + (" or (B, attributes) 0/1" if
                                                  self._multi_hot() else ""))
        return t.to(self.device)

    def _multi_hot(self) -> bool:
        """Whether the run's labels are multi-hot attributes (CelebA), (B, A)."""
        return self._run.data.test.y.dim() == 2

    def _y(self, y, n: int):
        """Labels for the model: required by conditional models; a classifier (M2) takes
        given labels instead of its prediction; other models ignore them."""
        if not (self.conditional or needs_label(self.model)):
            return None
        return self._labels(y, n, required=self.conditional)

    # -- the latent space ------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x, y=None) -> dict[str, torch.Tensor]:
        """The latent description of each example (tensors, batch first), by family:
        ``mean``/``logvar`` of q(z|x) (Gaussian latents; ``mean2``/``logvar2`` of a
        hierarchy's top layer), ``class_probs`` q(y|x) (M2), ``probs`` (B, N, K) of each
        categorical variable (Gumbel), ``codes`` (B, h, w) code indices (VQ-VAE), and ``code``:
        the code pictures move through, whenever the model has one."""
        x = self.prepare(x)
        return self.model.latents(x, self._y(y, len(x)))

    @torch.no_grad()
    def decode(self, z, y=None) -> torch.Tensor:
        """Mean images for codes: (B, D) codes (``encode(x)["code"]``; Gaussian means), (B, N)
        class indices of a Gumbel VAE, or (B, h, w) code indices of a VQ-VAE."""
        z = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z)
        z = z.to(self.device)
        model = self.model
        if isinstance(model, CodeGrid):
            return model.decode_codes(z.long())
        if isinstance(model, CategoricalCode) and not z.is_floating_point():
            return model.decode_classes(z)
        if not isinstance(model, HasCode):
            raise UserError(f"{_family(model)} has no code to decode")
        if z.dim() == 1:
            z = z.unsqueeze(0)
        if z.dim() != 2 or z.shape[-1] != model.code_dim:
            raise UserError(f"codes of shape {tuple(z.shape)}; this model decodes (B, "
                            f"{model.code_dim}) codes" + (" (flatten probabilities: "
                                                          "probs.flatten(1))" if isinstance(
                                                              model, CategoricalCode) else ""))
        y = self._labels(y, len(z), required=self.conditional or needs_label(model))
        return model.decode_code(z.float(), y)

    @torch.no_grad()
    def reconstruct(self, x, y=None) -> torch.Tensor:
        """Mean images of x passed through the model (at the posterior mean)."""
        x = self.prepare(x)
        return self.model.reconstruct(x, self._y(y, len(x)))

    @torch.no_grad()
    def sample(self, n: int, y=None, seed: int | None = None) -> torch.Tensor:
        """``n`` mean images drawn from the prior; conditional models draw classes ``y`` (one
        label or n; default: 0, 1, ... cycling)."""
        n = _count(n, "n")
        if self.conditional and y is None:
            y = torch.arange(int(n)) % self.num_classes
        y = self._labels(y, int(n), required=self.conditional)
        g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        return self.model.sample(int(n), y, generator=g)

    @torch.no_grad()
    def log_prob(self, x, y=None, k: int = 1000, max_batch: int | None = None
                 ) -> torch.Tensor:
        """Importance-sampled log p(x) (log p(x | y) for conditional models) per example, (B,)
        nats, with ``k`` samples; at most ``max_batch`` (example, sample) pairs at once
        (default: :func:`default_max_batch` of the device). A few examples at a time with
        all their samples, as ``evaluate`` does."""
        self._need_likelihood("log_prob")
        k = _count(k, "k")
        x = self.prepare(x)
        y = self._y(y, len(x)) if self.conditional else None
        mb = default_max_batch(self.device) if max_batch is None else int(max_batch)
        with fast_linears(self.model):
            return log_likelihood_by_groups(self.model, x, y, k, mb)

    @torch.no_grad()
    def elbo(self, x, y=None) -> dict[str, torch.Tensor]:
        """Per-example ``neg_elbo``, ``recon`` and ``kl`` (nats) and ``recon_error``."""
        x = self.prepare(x)
        return per_example(self.model, x, self._y(y, len(x)))

    @torch.no_grad()
    def interpolate(self, a, b, steps: int = 10, y=None) -> torch.Tensor:
        """Mean images along the straight line between the codes of examples ``a`` and
        ``b``, both ends included: (steps, C, H, W); conditional models: ``y`` one label
        (the class the whole path is drawn as) or the labels of a and b."""
        if not isinstance(self.model, HasCode):
            raise UserError(f"{_family(self.model)} has no continuous code to interpolate in")
        if int(steps) < 2:
            raise UserError(f"steps={steps}: an interpolation needs at least 2 (both ends)")
        x = torch.cat([self.prepare(a), self.prepare(b)])
        if len(x) != 2:
            raise UserError("interpolate takes one example for a and one for b")
        y = self._y(y, 2)
        if y is None and needs_label(self.model):      # M2: drawn as a's predicted class
            y = self.model.predict(x[:1]).expand(2)
        c = self.model.code(x, y)
        t = torch.linspace(0, 1, int(steps), device=c.device).unsqueeze(1)
        path = (1 - t) * c[0] + t * c[1]
        yy = None if y is None else y[:1].expand(int(steps))
        return self.model.decode_code(path, yy)

    # -- data --------------------------------------------------------------------------------
    def batches(self, split: str = "test", batch_size: int = 500, n: int | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) batches of the run's own ``train``, ``val`` or ``test`` split, as the model
        takes them (binarized runs: one fixed binarization); the first ``n`` examples."""
        if split not in ("train", "val", "test"):
            raise UserError(f"split={split!r}: use train, val or test")
        batch_size = _count(batch_size, "batch_size")
        part = self.data.eval_split(split)
        if n is not None:
            part = part.part(0, min(int(n), len(part)))
        return self.data.eval_batches(part, int(batch_size))

    def data_for(self, name: str | None = None, overrides: dict | None = None):
        """A data set for this model: the run's own (``name=None``) or the data set option
        ``name`` of ``configs/dataset`` (``mnist``, ``folder``, ``arrays``, ...), with
        ``overrides`` (``{"root": ..., "path": ...}``) on its keys; binarized as the run was.
        Its examples must have the model's shape (one line naming both when not)."""
        from omegaconf import OmegaConf

        from vae_train import trust
        from vae_train.build import load_image_data
        from vae_train.data import DataModule

        if name is None:
            node = OmegaConf.create(OmegaConf.to_container(self.cfg.dataset, resolve=False))
        else:
            node = OmegaConf.load(data_option(name))
            for key in ("binarize", "binarize_seed"):
                if key in self.cfg.dataset:
                    node[key] = self.cfg.dataset[key]
        for key, value in (overrides or {}).items():
            if value is not None:
                OmegaConf.update(node, str(key), value, force_add=True)
        trust.check_config({"dataset": OmegaConf.to_container(node, resolve=False)},
                           f"data={name}", False)
        data = load_image_data(node)
        get = node.get
        dm = DataModule(data, self.device, get("binarize", "none"), get("val_size", 0.1),
                        get("split_seed", 0), get("binarize_seed", 0), get("in_memory", "auto"),
                        get("memory_share", 0.5))
        if tuple(dm.shape) != self.input_shape:
            raise UserError(f"data={name or self.cfg.dataset.get('name')}: its examples are "
                            f"{'x'.join(map(str, dm.shape))}, the model takes "
                            f"{'x'.join(map(str, self.input_shape))}; give a data set of that "
                            "shape (dataset.image_size=... for a folder)")
        takes_labels = self.conditional or needs_label(self.model)
        if name is not None and takes_labels and list(dm.classes) != list(self.classes or []):
            raise UserError(f"data={name}: its classes ({_names(dm.classes)}) are not the "
                            f"run's ({_names(self.classes)}); {_family(self.model)} reads "
                            "labels as the run's classes, so it encodes only data labelled "
                            "with the same classes")
        return dm

    def _need_likelihood(self, what: str) -> None:
        if not self.has_likelihood:
            raise UserError(f"{_family(self.model)} has no likelihood bound, so it has no "
                            f"{what}; use the reconstruction error (elbo(x)['recon_error'])")


def data_option(name: str) -> Path:
    """The config file of the data set option ``name`` (``configs/dataset/<name>.yaml``), or
    one line listing the options: what ``data=`` of the commands is checked with before a run
    is loaded."""
    from vae_train import CONFIG_DIR

    path = Path(CONFIG_DIR) / "dataset" / f"{name}.yaml"
    if not path.is_file() or "/" in name or "\\" in name or name.startswith("."):
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"data={name} is not a data set option; use one of "
                        f"{', '.join(known)} (or leave data= out for the run's own)")
    return path


def _names(classes) -> str:
    classes = list(classes or [])
    return (", ".join(map(str, classes[:5])) + (", ..." if len(classes) > 5 else "")) or "none"


def _count(v, name: str) -> int:
    """A whole number >= 1 (a count of images, samples, examples), or one line."""
    try:
        ok = not isinstance(v, bool) and float(v).is_integer() and int(v) >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise UserError(f"{name}={v!r}: give a whole number >= 1")
    return int(v)


def needs_label(model) -> bool:
    """Models that predict the class and decode a code as one (M2) need y to decode, though
    they are not ``conditional`` (they predict it when encoding)."""
    return isinstance(model, Classifier) and isinstance(model, HasCode)


def load(run: str | Path, checkpoint: str = "best", device: str = "auto",
         data_root: str | None = None, trust_run_code: bool = False) -> Trained:
    """A trained run: ``run`` is its directory; ``checkpoint`` ``best``, ``last`` or a .pt
    path; ``device`` ``auto`` (the best present), ``cpu``, ``cuda`` or ``mps``; ``data_root``
    where its data set lives now if it moved; ``trust_run_code=True`` lets a run name classes
    outside vae-train (your own model or data set: their modules are imported). Errors are
    :class:`vae_train.errors.UserError` with one line saying what to do."""
    from vae_train.runs import load_run

    with torch.random.fork_rng(devices=[]):     # building seeds torch; the caller's RNG is kept
        return Trained(load_run(str(run), checkpoint, device, data_root,
                                trust_run_code=trust_run_code))
