"""What every data set is: a class built from the ``dataset`` config node (its ``_target_``)
that reads its examples into memory as :class:`ImageData`; and the options every data set
shares (sizes, the validation split, binarization, labels kept for semi-supervised models).

A data set of your own is a subclass of :class:`DataSet` that implements :meth:`DataSet.read`
(see docs/adding.md); nothing inside vae_train needs to change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from vae_train.checks import (CLASS_LABELS, Checked, Rule, integer, is_int, is_num, number,
                              one_of, optional)
from vae_train.data.factors import FactorGrid
from vae_train.data.rows import Rows
from vae_train.data.validate import check_image_data, origin_of
from vae_train.errors import UserError

BINARIZE = ("none", "static", "dynamic")


VALUES = ("8bit", "unit", "real", "binary")


@dataclass
class ImageData:
    """A data set: examples (N, C, H, W), uint8 images (0..255) or float values (sequences,
    (N, 1, T, F); vectors, (N, 1, 1, D)), and int64 labels, for both splits. Examples are a
    tensor in memory or :class:`vae_train.data.rows.Rows` of a file (memory-mapped).

    ``values`` says what the numbers are, so the likelihood can fit them: ``8bit`` (uint8
    images; discretised likelihoods and bits per dimension apply), ``unit`` (floats in
    [0, 1]), ``real`` (unbounded floats, e.g. standardised), ``binary`` (0/1); None: from the
    dtype (uint8: 8bit, else unit). ``stats``: the standardisation a data set applied
    (JSON-able, e.g. per-feature mean and std), saved with the run so that later commands
    apply the same."""

    name: str
    train_x: torch.Tensor | Rows
    train_y: torch.Tensor
    test_x: torch.Tensor | Rows
    test_y: torch.Tensor
    classes: list[str] = field(default_factory=list)
    # Generated from known factors of variation (dsprites): each example's factor indices
    # (N, K) int64, and the grid they index.
    train_factors: torch.Tensor | None = None
    test_factors: torch.Tensor | None = None
    factor_grid: FactorGrid | None = None
    values: str | None = None
    stats: dict | None = None

    @property
    def value_kind(self) -> str:
        if self.values is not None:
            return self.values
        return "8bit" if self.train_x.dtype == torch.uint8 else "unit"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DataSet(Checked, ABC):
    """A data set built from the ``dataset`` config node. Subclasses take their own options
    (a root folder, generator settings) and pass the shared ones (``**common``) on."""

    config_group = "dataset"
    checks = {
        "train_size": optional(integer(1)),
        "test_size": optional(integer(1)),
        "val_size": Rule(lambda v: is_num(v) and (0 < v < 1 or (is_int(v) and v >= 1)),
                         "a fraction in (0, 1) or a count >= 1"),
        "binarize": one_of(*BINARIZE),
        "split_seed": integer(0),
        "binarize_seed": integer(0),
        "labeled": optional(integer(1)),
        "in_memory": Rule(lambda v: v in (True, False, "auto"), "true, false or auto"),
        "memory_share": number(0, 1, low_open=True),
        "exclude_classes": optional(CLASS_LABELS,
                                    "null or a non-empty list of class labels (integers >= 0)"),
    }

    def __init__(self, name: str | None = None, train_size: int | None = None,
                 test_size: int | None = None, val_size: float = 0.1, binarize: str = "none",
                 split_seed: int = 0, binarize_seed: int = 0, labeled: int | None = None,
                 likelihood: str | None = None, learn_sigma: bool | None = None,
                 in_memory: bool | str = "auto",
                 memory_share: float = 0.5, exclude_classes: list[int] | None = None):
        self.name = name or type(self).__name__.lower()
        self.train_size, self.test_size = train_size, test_size
        self.val_size, self.binarize = val_size, binarize
        self.split_seed, self.binarize_seed = int(split_seed), int(binarize_seed)
        self.labeled = labeled            # semi-supervised models: labels kept (None: theirs)
        self.likelihood = likelihood      # the loss.likelihood this data asks for, if any
        self.learn_sigma = learn_sigma    # and its loss.learn_sigma, if any
        # data in a file (a decode cache, an .npy): read into memory (true), read a batch at a
        # time (false), or by size (auto: in memory below memory_share of the free memory)
        self.in_memory, self.memory_share = in_memory, float(memory_share)
        # the one-class protocol: these labels are dropped from the training (and so the
        # validation) split; the test split is kept whole
        self.exclude_classes = (None if exclude_classes is None
                                else sorted({int(c) for c in exclude_classes}))

    @abstractmethod
    def read(self) -> ImageData:
        """Both splits in memory. Raise :class:`vae_train.errors.UserError` with one line
        naming what is missing or wrong (and where it looked) when the data cannot be read."""

    def generated_bytes(self) -> int | None:
        """Bytes a generated data set will hold in memory (None: read from files, where the
        readers check sizes). Checked against the memory available before :meth:`read`."""
        return None

    def _check_generated_size(self) -> None:
        need = self.generated_bytes()
        if need is None:
            return
        from vae_train.memory import available_memory, human

        free = available_memory()
        if free is not None and need > free:
            raise UserError(f"dataset {self.name or type(self).__name__} would generate "
                            f"{human(need)} of examples, but {human(free)} of memory is "
                            "available; lower dataset.num_train / dataset.num_test")

    def load(self) -> ImageData:
        """:meth:`read`, checked (:func:`vae_train.data.validate.check_image_data`: shapes,
        labels, values; one line naming the data set when they do not fit), then only the
        first ``train_size`` / ``test_size`` examples."""
        self._check_generated_size()
        data = self.read()
        if not isinstance(data, ImageData):
            raise UserError(f"{origin_of(self)}: read() returned a {type(data).__name__}, not "
                            "an ImageData (see docs/adding.md)")
        data = check_image_data(data, origin_of(self))
        if self.exclude_classes:
            exclude_classes(data, self.exclude_classes)
        for split, size in (("train", self.train_size), ("test", self.test_size)):
            if size is None:
                continue
            x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
            if size > len(x):
                raise UserError(f"dataset.{split}_size={size} but {data.name} has only "
                                f"{len(x)} {split} images; use a smaller value or null for all")
            setattr(data, f"{split}_x", x[:size])
            setattr(data, f"{split}_y", y[:size])
            factors = getattr(data, f"{split}_factors")
            if factors is not None:
                setattr(data, f"{split}_factors", factors[:size])
        return data


def exclude_classes(data: ImageData, labels: list[int]) -> None:
    """Drop the training examples (and so the validation split carved from them) whose label
    is in ``labels``, in place; the test split stays whole. Labels the data set does not have,
    or dropping every training example, is one line."""
    known = max(data.num_classes, int(data.train_y.max()) + 1 if len(data.train_y) else 0)
    wrong = [c for c in labels if c >= known]
    if wrong:
        raise UserError(f"dataset.exclude_classes={labels}: {data.name} has no class "
                        f"{wrong[0]} (its labels are 0..{known - 1})")
    drop = torch.isin(data.train_y.cpu(), torch.tensor(labels, dtype=data.train_y.dtype))
    keep = torch.nonzero(~drop).flatten()
    if len(keep) == 0:
        raise UserError(f"dataset.exclude_classes={labels} drops every training example of "
                        f"{data.name}; leave at least one class to train on")
    if len(keep) == len(drop):
        return
    idx = keep if isinstance(data.train_x, torch.Tensor) else keep.numpy()
    data.train_x = data.train_x[idx]
    data.train_y = data.train_y[keep]
    if data.train_factors is not None:
        data.train_factors = data.train_factors[keep]
