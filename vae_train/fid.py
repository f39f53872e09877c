"""Sample quality: FID and KID (and precision/recall) of a run's prior samples against real
images, compared in the feature space of a network that has learned what the images show.

Two feature networks, never mixed (``evaluate`` writes their numbers under different keys of
``eval.json``: ``fid_inception`` and ``fid_own``):

* ``inception``: the standard one, the 2048-d pool features of the TensorFlow Inception-v3 that
  FID was defined with (torch-fidelity's port, through torchmetrics). Its weights are
  downloaded on first use into torch's hub cache (``$TORCH_HOME/hub/checkpoints``); offline and
  without them it is unavailable (:class:`Unavailable`, one line saying how to get them).
  Images are resized to 299x299; grey images are repeated to three channels.
* ``own``: a small conv classifier (:class:`FeatureNet`) trained on the run's own training
  split and its labels, stored with the run (``<run>/fid_features.pt``, with its test accuracy,
  the data set, shape and seed) and reused until one of those changes. Its penultimate layer
  (128 features) takes the place of Inception's pool layer: numbers are comparable between
  runs on the same data set with the same network, not with published Inception FIDs.

The numbers, from the features of ``n`` samples and ``n`` real images:

* FID (Heusel et al. 2017): ``|mu_r - mu_s|^2 + Tr(S_r + S_s - 2 (S_r S_s)^(1/2))``, the Frechet
  distance of Gaussians fitted to both sets of features (torchmetrics'
  ``FrechetInceptionDistance``). Biased upwards at small ``n``: compare at equal ``n``.
* KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
  ``(a.b / d + 1)^3``, its mean and standard deviation over random subsets (torchmetrics'
  ``KernelInceptionDistance``). Unbiased: about 0 for two samples of one distribution.
* precision and recall (Kynkaenniemi et al. 2019): the share of samples inside the real
  images' k-nearest-neighbour balls (fidelity) and of real images inside the samples' balls
  (coverage).

The features are computed once per image set and fed to the metrics (an identity feature
module), so each network sees each image once. Everything is batched with progress bars;
memory is the features (``n`` x 2048 or 128 floats per set) plus one batch.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from vae_train.errors import UserError, first_line

FEATURES_FILE = "fid_features.pt"
FORMAT = "vae-train-fid-features/1"
INSTALL = 'pip install "vae-train[fid]"'
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 + INCEPTION_FILE)
INCEPTION_NAME = "inception-v3-compat (torch-fidelity), 2048-d pool features"
# Inception takes images of at least this side well (smaller ones are upsampled from little).
INCEPTION_MIN_SIDE = 32
OWN_FEATURES = 128       # width of the own network's penultimate layer (its features)
OWN_WIDTH = 32           # channels of its first conv (then 2x and 4x)
# Its training batch (at most fid_batch_size): Fashion-MNIST's 54,000 images give 420 Adam steps
# an epoch. With batches of 500 (110 steps in 5 epochs on a 10,800-image subsample) it reached
# 60% test accuracy; with 128, many more steps for the same work.
OWN_BATCH = 128


class Unavailable(Exception):
    """A feature network that cannot be had here (offline without cached weights, no labels to
    train on, a package missing): ``evaluate`` notes it in one line and computes the rest."""


def require(*modules: str) -> None:
    """One line naming the extra when a package sample quality needs is missing."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"fid=true needs the package {name.replace('_', '-')}, which is not "
                            f"installed: {INSTALL}") from None


def choose(features: str, shape, values: str) -> str:
    """``auto``: Inception for colour images of at least 32x32 pixels in [0, 1], the own
    network for anything else (grey or small images, standardised data, sequences)."""
    if features != "auto":
        return features
    c, *side = shape
    if c == 3 and len(side) == 2 and min(side) >= INCEPTION_MIN_SIDE and values != "real":
        return "inception"
    return "own"


# -- the own feature network ------------------------------------------------------------------
class FeatureNet(nn.Module):
    """A small conv classifier: three 3x3 convs (the last two stride 2) with batch norm,
    global average pooling, a dense layer of ``features`` units (ReLU) whose output is the
    feature vector, and a linear head over the classes (or attributes)."""

    def __init__(self, shape, outputs: int, width: int = OWN_WIDTH,
                 features: int = OWN_FEATURES):
        super().__init__()
        c = int(shape[0])
        w = int(width)

        def block(a, b, stride):
            return [nn.Conv2d(a, b, 3, stride, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]

        self.body = nn.Sequential(*block(c, w, 1), *block(w, 2 * w, 2), *block(2 * w, 4 * w, 2),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(4 * w, features), nn.ReLU())
        self.head = nn.Linear(features, int(outputs))
        self.num_features = int(features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _labels_kind(y: torch.Tensor) -> str:
    return "attributes" if y.dim() == 2 else "classes"


def own_signature(run, epochs: int, seed: int, batch_size: int = OWN_BATCH) -> dict:
    """What the stored network must match to be reused: the data it was trained on and how."""
    data = run.data
    y = data.train.y
    return {"format": FORMAT, "dataset": str(run.cfg.dataset.get("name", data.name)),
            "shape": list(run.input_shape), "num_classes": int(data.num_classes),
            "labels": _labels_kind(y), "binarize": str(data.binarize),
            "train_examples": len(data.train), "epochs": int(epochs), "seed": int(seed),
            "width": OWN_WIDTH, "features": OWN_FEATURES,
            "batch_size": min(int(batch_size), OWN_BATCH)}


def _outputs(data) -> int:
    y = data.train.y
    return int(y.shape[1]) if y.dim() == 2 else int(data.num_classes)


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.dim() == 2:
        return nn.functional.binary_cross_entropy_with_logits(logits, y.float())
    return nn.functional.cross_entropy(logits, y)


def _correct(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Right answers in a batch: classes, or attributes (counted per attribute, as a share)."""
    if y.dim() == 2:
        return ((logits > 0) == (y > 0.5)).float().mean(1).sum().item()
    return (logits.argmax(1) == y).sum().item()


@torch.no_grad()
def accuracy(net: FeatureNet, batches: Iterable) -> float:
    right, n = 0.0, 0
    for x, y in batches:
        right += _correct(net(x), y)
        n += len(x)
    return right / max(n, 1)


def train_own(run, epochs: int, batch_size: int, seed: int, progress: bool = True
              ) -> tuple[FeatureNet, float]:
    """Train :class:`FeatureNet` on the run's training split (as the model saw it: binarized
    once where the run was) with its labels: Adam 1e-3, ``epochs`` epochs, shuffled with
    ``seed``, in batches of at most :data:`OWN_BATCH`; returns the network (eval mode) and its
    accuracy on the test split (batches of ``batch_size``)."""
    data = run.data
    if data.num_classes < 2:
        raise Unavailable(f"{data.name} has no class labels, so the own feature network "
                          "cannot be trained (fid_features=inception needs colour images of at "
                          f"least {INCEPTION_MIN_SIDE}x{INCEPTION_MIN_SIDE})")
    from vae_train.data import to_float

    train = data.eval_split("train")
    n = len(train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = FeatureNet(run.input_shape, _outputs(data)).to(run.device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(int(seed))
    step_size = min(int(batch_size), OWN_BATCH)
    steps = -(-n // step_size)
    net.train()
    with tqdm(total=epochs * steps, desc="fid feature network", unit="batch", leave=False,
              disable=None if progress else True) as bar:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=g)
            for a in range(0, n, step_size):
                idx = order[a:a + step_size]
                x = to_float(train.take(idx.to(train.y.device))).to(run.device)
                y = train.y[idx.to(train.y.device)].to(run.device)
                loss = _loss(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    net.eval()
    acc = accuracy(net, ((x.to(run.device), y.to(run.device))
                         for x, y in data.eval_batches(data.test, batch_size)))
    return net, acc


def own_network(run, epochs: int = 5, batch_size: int = 500, seed: int = 0,
                progress: bool = True, log: Callable[[str], None] = print
                ) -> tuple[FeatureNet, dict, bool]:
    """The run's own feature network: ``<run>/fid_features.pt`` when it was trained on this
    data set this way (:func:`own_signature`), else trained now and stored there. Returns the
    network, its record (signature and ``accuracy``) and whether it was trained now."""
    from vae_train.checkpoint import save_atomic

    path = Path(run.run_dir) / FEATURES_FILE
    want = own_signature(run, epochs, seed, batch_size)
    why = "none stored"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            meta = stored["meta"]
            differs = [k for k, v in want.items() if meta.get(k) != v]
            if not differs:
                net = FeatureNet(run.input_shape, _outputs(run.data)).to(run.device)
                net.load_state_dict(stored["state_dict"])
                return net.eval(), dict(meta), False
            why = "the stored one differs in " + ", ".join(differs)
        except Exception as e:      # unreadable, truncated, another layout: train afresh
            why = f"the stored one is unreadable ({first_line(e)})"
    log(f"training the FID feature network on {want['dataset']} ({why}; {epochs} epochs)")
    start = time.perf_counter()
    net, acc = train_own(run, epochs, batch_size, seed, progress)
    meta = {**want, "accuracy": acc, "seconds": time.perf_counter() - start}
    save_atomic({"meta": meta, "state_dict": {k: v.detach().cpu() for k, v in
                                              net.state_dict().items()}}, path)
    return net, meta, True


# -- Inception ----------------------------------------------------------------------------------
def _download(url: str, path: Path, progress: bool) -> None:
    """Fetch ``url`` to ``path`` (a temporary file renamed into place by torch.hub)."""
    torch.hub.download_url_to_file(url, str(path), progress=progress)


def inception_weights(progress: bool = True) -> Path:
    """The cached Inception weights, downloaded on first use; :class:`Unavailable` (one line
    saying where to put them) when they are not cached and cannot be fetched."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _download(INCEPTION_URL, path, progress)
    except Exception as e:      # no network, a proxy, a full disk, an interrupted transfer
        raise Unavailable(f"the Inception weights are not cached and could not be downloaded "
                          f"({first_line(e)}): run once with internet access, or copy "
                          f"{INCEPTION_URL} to {path} (the cache is $TORCH_HOME/hub/checkpoints)"
                          ) from None
    return path


def inception_network(device, progress: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from images in [0, 1] (B, C, H, W), C 1 or 3, to Inception's 2048 pool
    features."""
    import importlib.util

    if importlib.util.find_spec("torch_fidelity") is None:
        raise Unavailable(f"Inception features need torch-fidelity: {INSTALL}")
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = inception_weights(progress)
    try:       # plain tensors only (torch-fidelity itself loads the file without that check)
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise Unavailable(f"the cached Inception weights {path} are unreadable "
                          f"({first_line(e)}); delete the file to download them again") from None
    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                             feature_extractor_weights_path=str(path)).to(device)

    def extract(x: torch.Tensor) -> torch.Tensor:
        u8 = x.clamp(0, 1).mul(255).round().to(torch.uint8)
        if u8.shape[1] == 1:
            u8 = u8.expand(-1, 3, -1, -1)
        return net(u8)

    return extract


# -- images and features --------------------------------------------------------------------------
def sample_batches(run, n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """``n`` prior samples in batches (mean images; conditional models' labels cycle over the
    classes), drawn with one generator seeded with ``seed``; for a binarized run, binary
    images drawn from those means (the test images are binary too)."""
    model = run.model
    g = torch.Generator().manual_seed(int(seed))
    for a in range(0, n, batch_size):
        m = min(batch_size, n - a)
        y = None
        if model.conditional:
            y = (torch.arange(a, a + m) % model.num_classes).to(run.device)
        with torch.no_grad():
            x = model.sample(m, y, generator=g).float()
        if run.binarize != "none":
            x = (torch.rand(x.shape, generator=g) < x.detach().cpu().clamp(0, 1)).float()
        yield x.to(run.device)


def real_batches(run, split: str, n: int, batch_size: int) -> Iterator[torch.Tensor]:
    for x, _ in run.batches(split, batch_size, n):
        yield x.to(run.device)


@torch.no_grad()
def features_of(extract: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[torch.Tensor],
                n: int, desc: str, progress: bool = True) -> torch.Tensor:
    """The features of every image, (n, d) float64 on the CPU."""
    out = []
    with tqdm(total=n, desc=desc, unit="img", leave=False,
              disable=None if progress else True) as bar:
        for x in batches:
            out.append(extract(x).flatten(1).double().cpu())
            bar.update(len(x))
    return torch.cat(out)


# -- the metrics ----------------------------------------------------------------------------------
class _Given(nn.Module):
    """The identity as torchmetrics' feature extractor: the features are computed already."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = int(dim)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two sets of features (n, d)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Given(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return max(float(metric.compute()), 0.0)


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float, int]:
    """KID: the unbiased MMD^2 (cubic polynomial kernel) over ``subsets`` random subsets of
    ``subset_size`` (at most the smaller set); its mean, standard deviation and the size used."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(int(subset_size), len(real), len(fake))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=int(subsets),
                                         subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        mean, std = metric.compute()
    return float(mean), float(std), size


def _kth_radii(a: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance of each row of ``a`` to its k-th nearest other row."""
    out = []
    for i in range(0, len(a), chunk):
        d = torch.cdist(a[i:i + chunk], a)
        out.append(d.kthvalue(k + 1, dim=1).values)      # the row itself is at distance 0
    return torch.cat(out)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
            chunk: int) -> float:
    """The share of ``points`` within the ball of at least one centre."""
    hit = 0
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i:i + chunk], centres)
        hit += int((d <= radii.unsqueeze(0)).any(1).sum())
    return hit / len(points)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024
                     ) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019) with k-nearest-neighbour
    balls, in chunks of ``chunk`` rows (memory: chunk x n distances)."""
    r, f = real.float(), fake.float()
    k = min(int(k), len(r) - 1, len(f) - 1)
    precision = _inside(f, r, _kth_radii(r, k, chunk), chunk)
    recall = _inside(r, f, _kth_radii(f, k, chunk), chunk)
    return precision, recall


def scores(real: torch.Tensor, fake: torch.Tensor, kid_subsets: int = 100,
           kid_subset_size: int = 1000, pr_k: int = 3, seed: int = 0) -> dict:
    """FID, KID (mean, std) and, with ``pr_k`` > 0, precision and recall of ``fake`` features
    against ``real`` features."""
    mean, std, size = kid(real, fake, kid_subsets, kid_subset_size, seed)
    out = {"fid": fid(real, fake), "kid_mean": mean, "kid_std": std, "kid_subset_size": size}
    if pr_k:
        out["precision"], out["recall"] = precision_recall(real, fake, pr_k)
    return out


# -- what evaluate calls ------------------------------------------------------------------------------
def sample_quality(run, split: str = "test", n: int = 10000, features: str = "auto",
                   epochs: int = 5, batch_size: int = 500, seed: int = 0,
                   kid_subsets: int = 100, kid_subset_size: int = 1000, pr_k: int = 3,
                   floor: bool = True, progress: bool = True,
                   log: Callable[[str], None] = print) -> tuple[str, dict]:
    """FID/KID (and precision/recall) of ``n`` prior samples of a loaded run
    (:class:`vae_train.api.Trained`) against the first ``n`` examples of ``split``; with
    ``floor`` also of ``n`` training examples against the same ones (what a model that draws
    the data distribution itself would score at this ``n``). Returns the ``eval.json`` key
    (``fid_inception`` or ``fid_own``) and its record. Raises :class:`Unavailable` when the
    model cannot draw or no feature network can be had."""
    from vae_train.models.base import CodeGrid

    model = run.model
    family = type(model).__name__
    if isinstance(model, CodeGrid) and not model.has_prior:
        raise Unavailable(f"{family} has no trained prior (model.prior_epochs=0), so it draws no "
                          "samples to score; train with model.prior_epochs=10")
    start = time.perf_counter()
    n = min(int(n), len(run.data.eval_split(split)))
    if n < 2:
        raise Unavailable(f"split={split} has {n} example; FID needs at least 2")
    kind = choose(features, run.input_shape, run.values)
    record: dict = {}
    if kind == "inception":
        if features == "inception" and run.values == "real":
            raise Unavailable("fid_features=inception takes images with pixels in [0, 1]; this "
                              "run's data are real-valued: use fid_features=own")
        if run.input_shape[0] not in (1, 3) or len(run.input_shape) != 3:
            raise Unavailable(f"fid_features=inception takes grey or colour images, not "
                              f"{'x'.join(map(str, run.input_shape))}; use fid_features=own")
        try:
            extract = inception_network(run.device, progress)
            record.update(features="inception", network=INCEPTION_NAME)
        except Unavailable as e:
            if features == "inception":
                raise
            log(f"fid: {e}; using the own feature network instead")
            record["inception_unavailable"] = str(e)
            kind = "own"
    if kind == "own":
        net, meta, trained = own_network(run, epochs, batch_size, seed, progress, log)
        extract = net.features
        record.update(features="own", network=FEATURES_FILE, accuracy=meta["accuracy"],
                      network_epochs=meta["epochs"], trained_now=trained)
    real = features_of(extract, real_batches(run, split, n, batch_size), n,
                       f"fid features: {split}", progress)
    try:
        fake = features_of(extract, sample_batches(run, n, batch_size, seed), n,
                           "fid features: samples", progress)
    except UserError as e:
        raise Unavailable(f"{family} cannot draw samples: {e}") from None
    record.update(scores(real, fake, kid_subsets, kid_subset_size, pr_k, seed))
    record.update(n=n, split=split, pr_k=int(pr_k), kid_subsets=int(kid_subsets),
                  samples="binarized" if run.binarize != "none" else "means")
    if floor and split != "train":
        base = features_of(extract, real_batches(run, "train", n, batch_size),
                           min(n, len(run.data.eval_split("train"))), "fid features: train",
                           progress)
        record["floor"] = {k: v for k, v in scores(real, base, kid_subsets, kid_subset_size,
                                                   pr_k, seed).items()
                           if k in ("fid", "kid_mean", "kid_std", "precision", "recall")}
        record["floor"]["of"] = "train"
    record["seconds"] = time.perf_counter() - start
    return f"fid_{record['features']}", record


def describe(key: str, rec: dict) -> list[tuple[str, str]]:
    """Rows for evaluate's table."""
    label = "Inception" if rec["features"] == "inception" else "own"
    rows = [(f"FID ({label} features)", f"{rec['fid']:.3f}  (n={rec['n']} {rec['samples']} "
                                       f"vs {rec['split']})"),
            (f"KID ({label} features)", f"{rec['kid_mean']:.5f} +- {rec['kid_std']:.5f}")]
    if "precision" in rec:
        rows.append(("precision / recall", f"{rec['precision']:.3f} / {rec['recall']:.3f}  "
                                           f"(k={rec['pr_k']})"))
    if "floor" in rec:
        fl = rec["floor"]
        rows.append(("FID floor (train vs split)", f"{fl['fid']:.3f}  (KID {fl['kid_mean']:.5f})"))
    if rec["features"] == "own":
        rows.append(("FID feature network", f"{rec['network']}, test accuracy "
                                            f"{rec['accuracy']:.3f}"))
    return rows
