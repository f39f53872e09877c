"""``dataset=arrays``: a data set of your own in one file, ``.npy``, ``.npz`` or ``.csv``.

Accepted shapes (N examples first) and how they are stored, like every data set, as
(N, C, H, W):

- N x D vectors -> (N, 1, 1, D) (a ``.csv`` is always this: one row per example);
- N x T x F sequences -> (N, 1, T, F) (what ``model=rnn_vae`` reads: T steps of F features);
- N x C x H x W images -> as they are; uint8 stays uint8 (0..255, values ``8bit``), other
  types become float32;
- N x T x C x H x W videos (T frames of C x H x W, what ``model=video_vae`` reads) -> as they
  are, stored (N, T, C, H, W), with the same rules for their values.

Where the pieces come from:

- examples: the ``.npy`` array; in a ``.npz`` the array ``x`` (or its only array that is not
  a label array), or ``x_train`` and ``x_test`` (then that is the test split); in a ``.csv``
  every column but the label column (a header row is optional: the first row is a header when
  none of its cells is a number or it names the label column);
- labels (optional): in a ``.npz`` ``y`` or ``labels`` (with ``x_train``/``x_test``:
  ``y_train``/``y_test`` or ``labels_train``/``labels_test``); in a ``.csv`` the column
  ``label`` (another: ``label_column``); or ``labels=FILE.npy`` (one per example, train then
  test when the file has both splits). Labels may be any integers or strings: the classes are
  their sorted distinct values, numbered 0..K-1, named by the values;
- the test split: given (``x_test``), else ``test_split`` of the examples (a fraction or a
  count), chosen with ``split_seed``.

Values: data that are all 0/1 are ``binary`` (stored 0/1 float32 for float data, 0/255 uint8
otherwise, so they read back as 0/1), not standardised. Other non-uint8 data are standardised
by default (``standardize``: null = auto, true, false): per feature (a vector's D entries, a
sequence's F features over all steps, an image's channels) with the mean and standard deviation
of the TRAINING split, applied to both splits, and kept in ``ImageData.stats``
(``{"mean": [...], "std": [...], "shape": [C, H, W broadcast shape]}``); the values are then
``real``. ``stats=`` that dict applies a saved standardisation instead of computing one. Not
standardised: floats in [0, 1] are ``unit``, others ``real``.

Memory: an ``.npy`` is opened memory-mapped; when it needs no conversion (uint8 or float32, not
standardised, not 0/1 bytes) the splits are :class:`~vae_train.data.rows.Rows` of the file and
nothing is read up front but a scan for NaN/inf and the value range. Otherwise the splits are
built in memory, chunk by chunk, so temporaries stay bounded (``CHUNK_BYTES``).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from vae_train.checks import BOOLEAN, Rule, is_int, is_num, optional
from vae_train.data.base import DataSet, ImageData
from vae_train.data.rows import Rows
from vae_train.errors import UserError

log = logging.getLogger(__name__)

EXTENSIONS = (".npy", ".npz", ".csv")
LABEL_KEYS = ("y", "labels")                      # a .npz's labels (one split)
SPLIT_X = ("x_train", "x_test")                   # a .npz with both splits
SPLIT_LABELS = (("y_train", "y_test"), ("labels_train", "labels_test"))
DEFAULT_LABEL_COLUMN = "label"
CHUNK_BYTES = 32 * 2 ** 20                        # float64 temporaries per chunk, at most
SHAPES = ("N x D vectors, N x T x F sequences, N x C x H x W images or N x T x C x H x W "
          "videos")


def _is_stats(v) -> bool:
    if not isinstance(v, (Mapping, DictConfig)):
        return False
    return all(k in v for k in ("mean", "std", "shape"))


def _nonempty_str(v) -> bool:
    return isinstance(v, str) and v.strip() != ""


class Arrays(DataSet):
    """Examples (and optionally labels) from one ``.npy``, ``.npz`` or ``.csv`` file (see the
    module docstring for the accepted shapes and keys)."""

    checks = {
        "path": optional(Rule(_nonempty_str, "a file path"), "a .npy, .npz or .csv file path"),
        "labels": optional(Rule(_nonempty_str, "a file path"),
                           "null or a .npy file of one label per example"),
        "label_column": optional(Rule(_nonempty_str, "a column name"),
                                 "null (the column 'label' if there is one) or a column name"),
        "test_split": Rule(lambda v: is_num(v) and (0 < v < 1 or (is_int(v) and v >= 1)),
                           "a fraction in (0, 1) or a count >= 1"),
        "standardize": optional(BOOLEAN, "null (auto: floats that are not all 0/1), true or "
                                         "false"),
        "stats": optional(Rule(_is_stats, "a dict with mean, std and shape"),
                          "null or a run's saved standardisation (a dict with mean, std and "
                          "shape)"),
    }

    def __init__(self, path: str | None = None, labels: str | None = None,
                 label_column: str | None = None, test_split: float = 0.1,
                 standardize: bool | None = None, stats: dict | None = None, **common):
        super().__init__(**common)
        if path is None:
            raise UserError("dataset=arrays needs a file: dataset.path=FILE (.npy, .npz or "
                            ".csv)")
        self.path = Path(str(path)).expanduser()
        self.labels_path = None if labels is None else Path(str(labels)).expanduser()
        self.label_column = label_column
        self.test_split = test_split
        self.standardize = standardize
        self.stats = OmegaConf.to_container(stats) if isinstance(stats, DictConfig) else stats

    # -- reading ---------------------------------------------------------------------------
    def read(self) -> ImageData:
        src = read_source(self.path, self.label_column)
        if self.labels_path is not None:
            src.set_labels(read_label_file(self.labels_path), str(self.labels_path))
        train_x, test_x = src.split_arrays(self.test_split, self.split_seed)
        scan = Scan.of(src, train_x, test_x)
        return self._build(src, train_x, test_x, scan)

    def _build(self, src: Source, train: Part, test: Part, scan: Scan) -> ImageData:
        standardize = self.standardize
        if self.stats is not None:
            if standardize is False:
                raise UserError("dataset.stats is given but dataset.standardize=false; drop "
                                "one of them")
            standardize = True
        elif standardize is None:
            standardize = not scan.binary and scan.dtype != np.uint8
        shape = train.shape
        stats = None
        if standardize:
            if self.stats is not None:
                mean, std, bshape = check_stats(self.stats, shape, src.path)
            else:
                bshape = feature_shape(src.ndim, shape)
                mean, std = train_stats(train, bshape, src.path)
            stats = {"mean": mean.reshape(-1).tolist(), "std": std.reshape(-1).tolist(),
                     "shape": list(bshape)}
            # transform with exactly the numbers saved, so a run's stats read back reproduce it
            mean = np.asarray(stats["mean"], np.float64).reshape(bshape)
            std = np.asarray(stats["std"], np.float64).reshape(bshape)
            values, out_dtype, how = "real", np.float32, ("standardize", mean, std)
        elif scan.binary:
            values = "binary"
            if scan.dtype == np.uint8 and scan.max > 1:        # 0/255 images: as they are
                out_dtype, how = np.uint8, ("copy",)
            elif np.issubdtype(scan.dtype, np.floating):
                out_dtype, how = np.float32, ("copy",)
            else:                                              # 0/1 bytes, bools, ints
                out_dtype, how = np.uint8, ("times255",)
        elif scan.dtype == np.uint8:
            values, out_dtype, how = "8bit", np.uint8, ("copy",)
        else:
            values = "unit" if scan.min >= 0 and scan.max <= 1 else "real"
            out_dtype, how = np.float32, ("copy",)

        lazy = (src.mmapped and how[0] == "copy" and src.dtype == out_dtype
                and out_dtype in (np.uint8, np.float32))
        if lazy:
            xs = [Rows(p.base, p.index) for p in (train, test)]
        else:
            xs = [torch.from_numpy(convert(p, out_dtype, how)) for p in (train, test)]
        ys = [torch.from_numpy(src.codes[p.label_rows]) if src.codes is not None
              else torch.zeros(len(p), dtype=torch.int64) for p in (train, test)]
        log.info("dataset=arrays: %s: %d train + %d test examples of shape %s, values %s%s%s",
                 src.path, len(train), len(test), tuple(shape), values,
                 " (standardised per feature with the training split's mean and std)"
                 if standardize and self.stats is None else
                 " (standardised with the given dataset.stats)" if standardize else "",
                 f", {len(src.classes)} classes" if src.classes else ", no labels")
        return ImageData(self.name, xs[0], ys[0], xs[1], ys[1], classes=list(src.classes),
                         values=values, stats=stats)


# -- the file ---------------------------------------------------------------------------------
@dataclass
class Part:
    """Rows ``index`` (None: all) of ``base`` (N, C, H, W), and where their labels are in
    :attr:`Source.codes` (``label_rows``)."""

    base: np.ndarray
    index: np.ndarray | None
    label_rows: np.ndarray
    where: str                     # for messages: the file (and key)

    def __len__(self) -> int:
        return len(self.base) if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple:
        return tuple(self.base.shape[1:])

    def chunks(self, row_bytes: int):
        """Consecutive pieces of these rows (numpy arrays), each about ``CHUNK_BYTES``."""
        step = max(1, CHUNK_BYTES // max(1, row_bytes))
        for a in range(0, len(self), step):
            if self.index is None:
                yield a, self.base[a:a + step]
            else:
                yield a, self.base[self.index[a:a + step]]


class Source:
    """What a file holds: examples (one array, or train and test), raw labels, and whether
    the examples are memory-mapped."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray], labels: dict, mmapped: bool,
                 where: dict[str, str]):
        self.path, self.mmapped, self.where = path, mmapped, where
        self.ndim = None
        self.x = {}
        for split, a in arrays.items():
            if a.ndim not in (2, 3, 4, 5):
                raise UserError(f"{where[split]} holds an array of shape {a.shape}; accepted: "
                                f"{SHAPES}")
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) \
                    or np.issubdtype(a.dtype, np.complexfloating):
                raise UserError(f"{where[split]} holds {a.dtype} values; expected numbers")
            if len(a) == 0:
                raise UserError(f"{where[split]} holds no examples (shape {a.shape})")
            self.ndim = a.ndim
            self.x[split] = as_4d(a)
        if len(self.x) == 2 and self.x["train"].shape[1:] != self.x["test"].shape[1:]:
            raise UserError(f"{path}: x_train has examples of shape {arrays['train'].shape[1:]}"
                            f" but x_test {arrays['test'].shape[1:]}; they must match")
        if len(self.x) == 2 and self.x["train"].dtype != self.x["test"].dtype:
            self.x["test"] = self.x["test"].astype(self.x["train"].dtype)
        self.dtype = next(iter(self.x.values())).dtype
        self.codes, self.classes = None, []
        if labels:
            raw = [labels[s] for s in self.x]
            self.set_labels(raw[0] if len(raw) == 1 else (raw[0], raw[1]),
                            ", ".join(labels["where"]))

    @property
    def total(self) -> int:
        return sum(len(a) for a in self.x.values())

    def set_labels(self, raw, where: str) -> None:
        """Labels for every example (train then test), from ``where``."""
        if isinstance(raw, tuple):
            parts = [label_vector(r, where) for r in raw]
            lens = [len(p) for p in parts]
            if lens != [len(self.x["train"]), len(self.x["test"])]:
                raise UserError(f"{where}: {lens[0]} train and {lens[1]} test labels for "
                                f"{len(self.x['train'])} and {len(self.x['test'])} examples; "
                                "one label per example")
            raw = np.concatenate(parts)
        else:
            raw = label_vector(raw, where)
        if len(raw) != self.total:
            split = " (train then test)" if len(self.x) == 2 else ""
            raise UserError(f"{where} holds {len(raw)} labels for {self.total} examples in "
                            f"{self.path}{split}; one label per example")
        self.codes, self.classes = encode_labels(raw)

    def split_arrays(self, test_split, seed: int) -> tuple[Part, Part]:
        """(train, test): the file's own split, else a seeded one of ``test_split``."""
        if len(self.x) == 2:
            n = len(self.x["train"])
            return (Part(self.x["train"], None, np.arange(n), self.where["train"]),
                    Part(self.x["test"], None, n + np.arange(len(self.x["test"])),
                         self.where["test"]))
        x = self.x["all"]
        n = len(x)
        n_test = int(round(test_split * n)) if test_split < 1 else int(test_split)
        if not 0 < n_test < n:
            raise UserError(f"dataset.test_split={test_split} leaves {n - n_test} of {n} "
                            f"examples in {self.path} for training and {n_test} for testing; "
                            "both must be at least 1")
        perm = np.random.default_rng(seed).permutation(n)
        test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        return (Part(x, train, train, self.where["all"]), Part(x, test, test, self.where["all"]))


def as_4d(a: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 1, 1, D); (N, T, F) -> (N, 1, T, F); (N, C, H, W) and (N, T, C, H, W)
    as they are (views)."""
    if a.ndim == 2:
        return a.reshape(a.shape[0], 1, 1, a.shape[1])
    if a.ndim == 3:
        return a.reshape(a.shape[0], 1, *a.shape[1:])
    return a


def read_source(path: Path, label_column: str | None) -> Source:
    if not path.exists():
        raise UserError(f"dataset.path={path}: no such file; point dataset.path at a .npy, "
                        ".npz or .csv file")
    if not path.is_file():
        raise UserError(f"dataset.path={path} is a directory, not a file; point it at a .npy, "
                        ".npz or .csv file")
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise UserError(f"dataset.path={path}: {ext or 'no extension'} is not supported; use "
                        ".npy, .npz or .csv")
    if ext == ".npy":
        return Source(path, {"all": _load_npy(path)}, {}, True, {"all": str(path)})
    if ext == ".npz":
        return _read_npz(path)
    return _read_csv(path, label_column)


def _load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e) or "object" in str(e).lower():
            raise UserError(f"{path} holds Python objects, not numbers; save a numeric array "
                            "(numpy.save of a float, int or uint8 array)") from None
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path} as a .npy file: {e}") from None


def _read_npz(path: Path) -> Source:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise UserError(f"{path} is a .npy file, not a .npz archive; rename it to .npy")
            keys = list(z.files)
            arrays = {k: z[k] for k in keys}
    except UserError:
        raise
    except ValueError as e:
        hint = " (save numeric arrays, not Python objects)" if "pickle" in str(e) else ""
        raise UserError(f"cannot read {path} as a .npz file: {str(e).splitlines()[0]}{hint}"
                        ) from None
    except Exception as e:  # noqa: BLE001 - a corrupt zip (BadZipFile), a truncated member, ...
        raise UserError(f"cannot read {path} as a .npz file: {type(e).__name__}: {e}") from None
    where = lambda k: f"{path} [{k}]"  # noqa: E731
    has = [k for k in SPLIT_X if k in arrays]
    if has:
        if len(has) == 1:
            raise UserError(f"{path} has {has[0]} but no {SPLIT_X[1 - SPLIT_X.index(has[0])]};"
                            " give both x_train and x_test, or one array x (split by "
                            "dataset.test_split)")
        labels = {}
        for ytr, yte in SPLIT_LABELS:
            if ytr in arrays or yte in arrays:
                if not (ytr in arrays and yte in arrays):
                    raise UserError(f"{path} has {ytr if ytr in arrays else yte} but not "
                                    f"{yte if ytr in arrays else ytr}; give labels for both "
                                    "splits or neither")
                labels = {"train": arrays[ytr], "test": arrays[yte],
                          "where": [where(ytr), where(yte)]}
                break
        return Source(path, {"train": arrays["x_train"], "test": arrays["x_test"]}, labels,
                      False, {"train": where("x_train"), "test": where("x_test")})
    label_keys = [k for k in LABEL_KEYS if k in arrays]
    if "x" in arrays:
        xkey = "x"
    else:
        others = [k for k in keys if k not in LABEL_KEYS]
        if len(others) != 1:
            raise UserError(f"{path} holds arrays {keys or 'none'}; name the examples x (and "
                            "the labels y), or x_train and x_test (and y_train, y_test)")
        xkey = others[0]
    labels = ({"all": arrays[label_keys[0]], "where": [where(label_keys[0])]}
              if label_keys else {})
    return Source(path, {"all": arrays[xkey]}, labels, False, {"all": where(xkey)})


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _read_csv(path: Path, label_column: str | None) -> Source:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path} as a CSV file: {e}") from None
    if not rows:
        raise UserError(f"{path} is empty; a CSV needs one row of numbers per example")
    want = label_column or DEFAULT_LABEL_COLUMN
    first = [c.strip() for c in rows[0][1]]
    header = None
    if want in first or all(_number(c) is None for c in first):
        header = first
        rows = rows[1:]
    names = header or [str(i + 1) for i in range(len(first))]
    label_at = names.index(want) if header is not None and want in header else None
    if label_column is not None and label_at is None:
        found = f"its header: {', '.join(header)}" if header else "its first row is no header"
        raise UserError(f"dataset.label_column={label_column}: {path} has no such column "
                        f"({found})")
    if not rows:
        raise UserError(f"{path} has a header but no rows of numbers")
    width = len(names)
    feature_cols = [j for j in range(width) if j != label_at]
    if not feature_cols:
        raise UserError(f"{path} has no feature columns besides the label column")
    x = np.empty((len(rows), len(feature_cols)), np.float64)
    raw_labels = []
    for i, (line, row) in enumerate(rows):
        if len(row) != width:
            raise UserError(f"{path}: line {line} has {len(row)} cells but the "
                            f"{'header' if header else 'first row'} has {width}; every row "
                            "needs one cell per column")
        for k, j in enumerate(feature_cols):
            v = _number(row[j])
            if v is None:
                column = f"column {j + 1}" + (f" ({names[j]!r})" if header else "")
                hint = ("; a first row is a header only when none of its cells is a number"
                        if header is None and i == 0 else "")
                raise UserError(f"{path}: line {line}, {column}: {row[j].strip()!r} is not a "
                                f"number{hint}")
            x[i, k] = v
        if label_at is not None:
            raw_labels.append(row[label_at].strip())
    labels = {}
    if label_at is not None:
        labels = {"all": np.asarray(raw_labels), "where": [f"{path} [column {want!r}]"]}
    return Source(path, {"all": x}, labels, False, {"all": str(path)})


def read_label_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"dataset.labels={path}: no such file; give a .npy file of one label "
                        "per example")
    if path.suffix.lower() != ".npy":
        raise UserError(f"dataset.labels={path}: {path.suffix or 'no extension'} is not "
                        "supported; save the labels with numpy.save (.npy)")
    return np.asarray(_load_npy(path, mmap=False))


def label_vector(raw, where: str) -> np.ndarray:
    """Labels as a 1-D array of integers or strings."""
    a = np.asarray(raw)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise UserError(f"{where}: labels of shape {a.shape}; expected one label per example "
                        "(N,)")
    if a.dtype.kind == "U" or a.dtype.kind == "S":
        strings = np.char.decode(a, "utf-8") if a.dtype.kind == "S" else a
        as_int = [_int_or_none(s) for s in strings]
        return np.asarray(as_int, np.int64) if all(v is not None for v in as_int) else strings
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or np.any(np.mod(a, 1) != 0):
            bad = a[~np.isfinite(a) | (np.mod(np.nan_to_num(a), 1) != 0)][0]
            raise UserError(f"{where}: label {float(bad):g} is not a whole number; labels "
                            "must be integers or strings")
        return a.astype(np.int64)
    raise UserError(f"{where}: labels of type {a.dtype}; labels must be integers or strings")


def _int_or_none(s: str) -> int | None:
    try:
        return int(s)
    except ValueError:
        v = _number(s)
        return int(v) if v is not None and math.isfinite(v) and v == int(v) else None


def encode_labels(raw: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(codes 0..K-1 as int64, names): the classes are the sorted distinct values."""
    values, codes = np.unique(raw, return_inverse=True)
    return codes.astype(np.int64).reshape(-1), [str(v) for v in values]


# -- values -----------------------------------------------------------------------------------
@dataclass
class Scan:
    """What one pass over every example found: its dtype, range and whether it is all 0/1
    (or, uint8, all 0/255)."""

    dtype: np.dtype
    min: float
    max: float
    binary: bool

    @classmethod
    def of(cls, src: Source, *parts: Part) -> Scan:
        dtype = src.dtype
        lo, hi, binary = math.inf, -math.inf, True
        zero255 = dtype == np.uint8
        for part in parts:
            nonfinite, first = 0, None
            row_bytes = 8 * math.prod(part.shape)
            for a, c in part.chunks(row_bytes):
                if np.issubdtype(c.dtype, np.floating):
                    bad = ~np.isfinite(c)
                    if bad.any():
                        nonfinite += int(bad.sum())
                        if first is None:
                            r = int(np.flatnonzero(bad.reshape(len(c), -1).any(1))[0])
                            first = int(part.index[a + r]) if part.index is not None else a + r
                        continue
                lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
                if binary:
                    binary = bool(np.all((c == 0) | (c == 1)))
                if zero255:
                    zero255 = bool(np.all((c == 0) | (c == 255)))
            if nonfinite:
                raise UserError(f"{part.where} holds {nonfinite} NaN or infinite values (the "
                                f"first in example {first}); remove or replace them")
        return cls(np.dtype(dtype), lo, hi, binary or zero255)


def feature_shape(ndim: int, shape: tuple) -> tuple[int, ...]:
    """The shape standardisation statistics have (one per feature), broadcast over an example
    (C, H, W) or (T, C, H, W): a vector's D entries, a sequence's F features (pooled over the T
    steps), an image's C channels, a video's C channels (pooled over the frames)."""
    if len(shape) == 4:
        return (1, shape[1], 1, 1)
    c, h, w = shape
    return (1, 1, w) if ndim in (2, 3) else (c, 1, 1)


def train_stats(train: Part, bshape: tuple, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (population) of the training rows, in one chunked pass
    (Chan et al.'s pairwise update, float64); a constant feature gets std 1 (logged)."""
    axes = (0, *(i + 1 for i, s in enumerate(bshape) if s == 1))
    count, mean, m2 = 0, np.zeros(bshape), np.zeros(bshape)
    lo, hi = np.full(bshape, np.inf), np.full(bshape, -np.inf)
    for _, c in train.chunks(8 * math.prod(train.shape)):
        c = c.astype(np.float64)
        n = c.size // math.prod(bshape)
        cm = c.mean(axis=axes, keepdims=True)[0]
        cm2 = ((c - cm) ** 2).sum(axis=axes, keepdims=True)[0]
        delta = cm - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + cm2 + delta ** 2 * (count * n / total)
        count = total
        lo = np.minimum(lo, c.min(axis=axes, keepdims=True)[0])
        hi = np.maximum(hi, c.max(axis=axes, keepdims=True)[0])
    std = np.sqrt(m2 / count)
    constant = lo == hi
    if constant.any():
        idx = np.flatnonzero(constant.reshape(-1))
        log.warning("dataset=arrays: %d of %d features of %s are constant in the training "
                    "split (std 0): %s%s; they are centred and divided by 1, not by 0",
                    len(idx), constant.size, path, idx[:10].tolist(),
                    " ..." if len(idx) > 10 else "")
        std = np.where(constant, 1.0, std)
    return mean, std


def check_stats(stats: Mapping, shape: tuple, path: Path) -> tuple[np.ndarray, np.ndarray,
                                                                    tuple]:
    """The mean and std of a given ``dataset.stats``, checked against the data's shape."""
    try:
        bshape = tuple(int(s) for s in stats["shape"])
        mean = np.asarray(stats["mean"], np.float64)
        std = np.asarray(stats["std"], np.float64)
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"dataset.stats is not a saved standardisation ({e}); it needs lists "
                        "mean, std and shape") from None
    if len(bshape) != len(shape) or any(b not in (1, s) for b, s in zip(bshape, shape)):
        raise UserError(f"dataset.stats has shape {list(bshape)}, which does not fit the "
                        f"examples of {path} (shape {list(shape)}); were they saved for "
                        "another file?")
    n = math.prod(bshape)
    if mean.shape != (n,) or std.shape != (n,):
        raise UserError(f"dataset.stats has {mean.size} means and {std.size} stds for shape "
                        f"{list(bshape)} ({n} features); they must match")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise UserError("dataset.stats holds a non-finite mean or a std that is not > 0")
    return mean.reshape(bshape), std.reshape(bshape), bshape


def convert(part: Part, out_dtype, how: tuple) -> np.ndarray:
    """The rows of ``part`` in memory as ``out_dtype``, converted chunk by chunk: ``copy``,
    ``times255`` (0/1 -> 0/255 bytes) or ``standardize`` (with mean and std)."""
    out = np.empty((len(part), *part.shape), out_dtype)
    for a, c in part.chunks(8 * math.prod(part.shape)):
        if how[0] == "standardize":
            c = (c.astype(np.float64) - how[1]) / how[2]
        elif how[0] == "times255":
            c = c.astype(np.uint8) * np.uint8(255)
        out[a:a + len(c)] = c
    return out
