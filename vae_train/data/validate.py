"""The checks every data set's examples pass when they are read, whatever read them.

:meth:`vae_train.data.base.DataSet.load` runs :func:`check_image_data` on what ``read()``
returned, before any model is built: the parsers of known formats (IDX, CIFAR, SVHN, image
folders) refuse a bad file with its path first, and this is the net under every data set,
a user's own included. What must hold, each refused with one line naming the data set:

* both splits hold examples (N >= 1) of shape (N, C, H, W) with C, H, W >= 1 (videos:
  (N, T, C, H, W), T frames of C x H x W), of one shape
  and one type (uint8 images or floats), the test split's as the training split's;
* labels are integers, one per example: class numbers 0..K-1 for K = ``len(classes)``
  (every label 0 when the set has no classes: unlabelled), or a multi-hot (N, K) of 0/1
  (attributes); integer types other than int64 are converted, floats are refused;
* factor indices (generated sets) are one row per example;
* ``values`` is a known kind, and examples held in memory as floats are finite and fit it:
  ``unit`` (also the default for floats) in [0, 1], ``binary`` 0/1 (uint8: 0/255), ``8bit``
  only for uint8. Examples in a file (:class:`~vae_train.data.rows.Rows`) are not scanned
  here: their readers scan them (``dataset=arrays``) or decode them to uint8 (folders).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vae_train.data.rows import Rows
from vae_train.errors import UserError

VALUE_KINDS = ("8bit", "unit", "real", "binary")
FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SCAN_BYTES = 64 * 2 ** 20          # examples scanned at a time (bounds the temporaries)
SPLITS = ("train", "test")


def origin_of(dataset) -> str:
    """How messages name a data set: ``dataset fashion_mnist (FashionMNIST)``."""
    cls = type(dataset)
    where = cls.__name__ if cls.__module__.startswith("vae_train.") \
        else f"{cls.__module__}.{cls.__qualname__}"
    return f"dataset {getattr(dataset, 'name', '?')} ({where})"


def _shape(x) -> str:
    return "x".join(str(int(s)) for s in x)


def check_image_data(data, origin: str = "the data set"):
    """Refuse ``data`` (an :class:`~vae_train.data.base.ImageData`) with one line when it does
    not fit (see the module); labels of another integer type become int64 in place. Returns
    ``data``. (That ``data`` is an ImageData at all is checked by ``DataSet.load``.)"""
    fix = "fix the files, or the data set's read()"
    classes = data.classes
    if not isinstance(classes, (list, tuple)):
        raise UserError(f"{origin}: classes is a {type(classes).__name__}, not a list of class "
                        "names")
    xs = {}
    for split in SPLITS:
        x = getattr(data, f"{split}_x")
        if not isinstance(x, (torch.Tensor, Rows)):
            raise UserError(f"{origin}: the {split} examples are a {type(x).__name__}, not a "
                            "tensor; " + fix)
        dtype = _dtype(x)
        if x.dim() not in (4, 5):
            raise UserError(f"{origin}: the {split} examples have shape {tuple(x.shape)}; "
                            "expected (N, C, H, W) images or (N, T, C, H, W) videos, 4 or 5 "
                            "dimensions; " + fix)
        if not (dtype == torch.uint8 or dtype in FLOAT_TYPES):
            raise UserError(f"{origin}: the {split} examples are {_name(x, dtype)}; expected "
                            "uint8 images (0..255) or floats; " + fix)
        if len(x) == 0:
            raise UserError(f"{origin}: the {split} split has no examples (shape "
                            f"{tuple(x.shape)}); " + fix + " (is a file empty?)")
        if min(x.shape[1:]) < 1:
            raise UserError(f"{origin}: the {split} examples are of zero size, "
                            f"{_shape(x.shape[1:])} ({_dims(x)}); " + fix)
        xs[split] = x
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise UserError(f"{origin}: the test examples are {_shape(xs['test'].shape[1:])} but the "
                        f"training examples {_shape(xs['train'].shape[1:])} "
                        f"({_dims(xs['train'])}); both "
                        "splits must have one shape: " + fix)
    if xs["train"].dtype != xs["test"].dtype:
        raise UserError(f"{origin}: the test examples are {xs['test'].dtype} but the training "
                        f"examples {xs['train'].dtype}; both splits must have one type: " + fix)
    for split in SPLITS:
        y = _check_labels(getattr(data, f"{split}_y"), len(xs[split]), split, classes, origin)
        setattr(data, f"{split}_y", y)
        factors = getattr(data, f"{split}_factors")
        if factors is not None and len(factors) != len(xs[split]):
            raise UserError(f"{origin}: {len(factors)} rows of {split} factors for "
                            f"{len(xs[split])} examples; one per example: " + fix)
    _check_values(data, xs, origin)
    return data


def _dims(x) -> str:
    """What the dimensions after N are: ``C x H x W`` (images) or ``T x C x H x W`` (videos)."""
    return "T x C x H x W" if x.dim() == 5 else "C x H x W"


def _dtype(x) -> torch.dtype | None:
    """The torch type of a tensor or of :class:`Rows` (None: a file's type torch lacks)."""
    if isinstance(x, Rows):
        try:
            return x.dtype
        except KeyError:
            return None
    return x.dtype


def _name(x, dtype) -> str:
    return str(dtype) if dtype is not None else str(np.dtype(x.base.dtype))


def _check_labels(y, n: int, split: str, classes, origin: str) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        try:
            y = torch.as_tensor(np.asarray(y))
        except (TypeError, ValueError, RuntimeError):
            raise UserError(f"{origin}: the {split} labels are a {type(y).__name__}, not a "
                            "tensor of integers") from None
    if y.dtype.is_floating_point or y.dtype.is_complex:
        raise UserError(f"{origin}: the {split} labels are {y.dtype}; labels must be integers "
                        "(class numbers 0..K-1, or 0/1 attributes)")
    if y.dtype != torch.int64:
        y = y.long()
    k = len(classes)
    if y.dim() not in (1, 2) or len(y) != n:
        raise UserError(f"{origin}: {tuple(y.shape)} {split} labels for {n} examples; expected "
                        f"one per example, ({n},) class numbers or ({n}, K) 0/1 attributes")
    if y.dim() == 2:
        if k and y.shape[1] != k:
            raise UserError(f"{origin}: the {split} labels have {y.shape[1]} attribute columns "
                            f"but the set names {k} classes; one column per name")
        bad = (y != 0) & (y != 1)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise UserError(f"{origin}: the {split} labels hold {int(bad.sum())} values that are "
                            f"not 0 or 1 (the first in example {i}); attribute labels are "
                            "multi-hot 0/1")
        return y
    if n == 0:
        return y
    lo, hi = int(y.min()), int(y.max())
    if k == 0:
        if lo != 0 or hi != 0:
            raise UserError(f"{origin}: the {split} labels run from {lo} to {hi} but the set "
                            "names no classes; name them (ImageData.classes), or give every "
                            "example label 0 (unlabelled)")
        return y
    if lo < 0 or hi >= k:
        bad = (y < 0) | (y >= k)
        i = int(torch.nonzero(bad)[0])
        raise UserError(f"{origin}: {int(bad.sum())} {split} labels are outside 0..{k - 1} for "
                        f"its {k} classes (the first: {int(y[i])}, example {i}); the labels "
                        "are corrupt or the class list is short")
    return y


def _check_values(data, xs: dict, origin: str) -> None:
    kind = data.values
    if kind is not None and kind not in VALUE_KINDS:
        raise UserError(f"{origin}: values={kind!r} is not known; use one of "
                        f"{', '.join(VALUE_KINDS)} (or None: from the type)")
    dtype = xs["train"].dtype
    kind = kind or ("8bit" if dtype == torch.uint8 else "unit")
    if kind == "8bit" and dtype != torch.uint8:
        raise UserError(f"{origin}: values=8bit but the examples are {dtype}; 8-bit images "
                        "are uint8 0..255")
    if dtype == torch.uint8 and kind != "binary":
        return                                   # any byte is a valid 8-bit (or unit) value
    for split in SPLITS:
        x = xs[split]
        if isinstance(x, Rows):
            continue                             # its reader scanned it (see the module)
        lo, hi, nonfinite, binary = _scan(x)
        if nonfinite:
            raise UserError(f"{origin}: the {split} examples hold {nonfinite} NaN or infinite "
                            "values; remove or replace them")
        if kind == "binary":
            top = 255 if dtype == torch.uint8 else 1
            if not binary:
                raise UserError(f"{origin}: values=binary but the {split} examples hold values "
                                f"other than 0 and {top} (from {lo:g} to {hi:g})")
        elif kind == "unit" and (lo < 0 or hi > 1):
            said = "values=unit" if data.values else "float examples without values= (unit)"
            raise UserError(f"{origin}: {said}, but the {split} examples run from {lo:g} to "
                            f"{hi:g}, outside [0, 1]; scale them to [0, 1] or set "
                            "values='real'")


def _scan(x: torch.Tensor) -> tuple[float, float, int, bool]:
    """(min, max of the finite values, count of NaN/inf, all 0/1 (uint8: 0/255)) of ``x``,
    a chunk of rows at a time."""
    row = max(1, math.prod(x.shape[1:]) * x.element_size())
    step = max(1, SCAN_BYTES // row)
    lo, hi, nonfinite, binary = math.inf, -math.inf, 0, True
    top = 255 if x.dtype == torch.uint8 else 1
    for a in range(0, len(x), step):
        c = x[a:a + step]
        if c.dtype != torch.uint8:
            finite = torch.isfinite(c)
            if not bool(finite.all()):
                nonfinite += int((~finite).sum())
                c = c[finite]
                if c.numel() == 0:
                    continue
        lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
        if binary:
            binary = bool(((c == 0) | (c == top)).all())
    return lo, hi, nonfinite, binary
