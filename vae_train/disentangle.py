"""Disentanglement metrics for data sets generated from known factors (``dataset=dsprites``).

The metric math is pure functions over arrays: ``codes`` (N, D) float, one row per image, and
``factors`` (N, K) int, the factor indices that generated it. Evaluation (:func:`measure`) draws
factor values, renders their images with the data set's ``vae_train.data.FactorGrid``, and
encodes them with the model's ``code`` (the posterior mean of the code layer, as the papers
use); the encoding function is ``vae_train.evaluate.model_code_fn``. Nothing here knows
models or data.

* **MIG**, the mutual information gap (Chen et al. 2018): each latent is cut into ``bins``
  equal-width bins over its range on N examples; I(z_j; v_k) is the plug-in mutual information
  (nats) of the binned latent and the factor, H(v_k) the factor's entropy on the same examples;
  MIG = mean over factors k of (largest I(z_j; v_k) - second largest) / H(v_k). 0: no latent
  carries more about a factor than another; 1: one latent holds each factor and no other does.
  With 20 bins a latent can hold at most log 20 nats, so a factor with more values than bins
  (orientation: 40, position: 32) tops out below 1 even for a perfect code (about 0.7-0.76;
  MIG about 0.84 on dSprites).
* **FactorVAE metric** (Kim & Mnih 2018): each latent is divided by its standard deviation over
  the data; latents whose variance is at most ``threshold`` have collapsed and are left out. A
  vote fixes one factor (chosen uniformly) at a uniformly chosen value, draws ``group`` (L)
  images whose other factors are uniform, and records the latent with the smallest variance of
  the normalised code across them. A majority-vote classifier (each latent -> the factor it
  was most often the argmin for) is fitted on half the votes and scored on the other half:
  its accuracy there is the metric (1: every factor is held by its own latent; 1/K: chance).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


# -- MIG ------------------------------------------------------------------------------------------
def discretize(codes: np.ndarray, bins: int = 20) -> np.ndarray:
    """Each column cut into ``bins`` equal-width bins over its range: (N, D) int in 0..bins-1
    (a constant column is all 0)."""
    codes = np.asarray(codes, dtype=np.float64)
    lo, hi = codes.min(0), codes.max(0)
    width = np.where(hi > lo, hi - lo, 1.0)
    return np.clip(((codes - lo) / width * bins).astype(np.int64), 0, bins - 1)


def entropy(labels: np.ndarray) -> float:
    """Plug-in entropy (nats) of a discrete sample."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information (nats) of two discrete samples of the same length."""
    _, a = np.unique(np.asarray(a), return_inverse=True)
    _, b = np.unique(np.asarray(b), return_inverse=True)
    na, nb = a.max() + 1, b.max() + 1
    joint = np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb) / len(a)
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def mutual_info_matrix(codes: np.ndarray, factors: np.ndarray, bins: int = 20) -> np.ndarray:
    """I(binned z_j; v_k) in nats: (D latents, K factors)."""
    binned = discretize(codes, bins)
    factors = np.asarray(factors)
    return np.array([[mutual_information(binned[:, j], factors[:, k])
                      for k in range(factors.shape[1])] for j in range(binned.shape[1])])


def mig(codes: np.ndarray, factors: np.ndarray, bins: int = 20) -> dict:
    """The mutual information gap and what it is made of: ``mig``, ``per_factor`` (K,),
    ``mutual_info`` (D, K) nats, ``factor_entropy`` (K,) nats."""
    mi = mutual_info_matrix(codes, factors, bins)
    h = np.array([entropy(np.asarray(factors)[:, k]) for k in range(mi.shape[1])])
    top = -np.sort(-mi, axis=0)
    second = top[1] if len(top) > 1 else np.zeros(mi.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(h > 0, (top[0] - second) / h, 0.0)
    return {"mig": float(gap.mean()), "per_factor": gap, "mutual_info": mi, "factor_entropy": h}


# -- FactorVAE metric -----------------------------------------------------------------------------
def vote_factors(sizes, votes: int, group: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Factor indices for ``votes`` groups of ``group`` images: (votes, group, K), and which
    factor each group holds fixed (votes,). The fixed factor and its value are uniform; the
    other factors are drawn uniformly per image."""
    sizes = list(sizes)
    fixed = rng.integers(0, len(sizes), votes)
    f = np.stack([rng.integers(0, s, (votes, group)) for s in sizes], axis=-1)
    value = np.array([rng.integers(0, sizes[k]) for k in fixed])
    f[np.arange(votes), :, fixed] = value[:, None]
    return f.astype(np.int64), fixed.astype(np.int64)


def vote_argmins(groups: np.ndarray, scale: np.ndarray, active: np.ndarray) -> np.ndarray:
    """For codes of each group (V, L, D): the active latent with the smallest variance of
    code / scale across the group (V,), or -1 where no latent is active."""
    groups = np.asarray(groups, dtype=np.float64)
    if not np.any(active):
        return np.full(len(groups), -1, dtype=np.int64)
    var = (groups / np.asarray(scale)).var(axis=1, ddof=1)
    var[:, ~np.asarray(active)] = np.inf
    return var.argmin(1).astype(np.int64)


def majority_vote(argmins: np.ndarray, fixed: np.ndarray, num_latents: int,
                  num_factors: int) -> np.ndarray:
    """The classifier: for each latent (and the last entry: 'no active latent'), the factor it
    was most often the argmin for (ties: the lower factor index); a latent never chosen gets
    the most common factor."""
    counts = np.zeros((num_latents + 1, num_factors), dtype=np.int64)
    np.add.at(counts, (np.asarray(argmins), np.asarray(fixed)), 1)  # -1 -> the last row
    overall = int(np.bincount(np.asarray(fixed), minlength=num_factors).argmax())
    return np.where(counts.sum(1) > 0, counts.argmax(1), overall)


def factorvae_score(train_argmins, train_fixed, eval_argmins, eval_fixed, num_latents: int,
                    num_factors: int) -> dict:
    """Fit the majority vote on the training votes; ``train_accuracy``, ``accuracy`` (on the
    evaluation votes: the metric) and ``classifier`` (latent -> factor index)."""
    clf = majority_vote(train_argmins, train_fixed, num_latents, num_factors)
    acc = lambda a, f: float(np.mean(clf[np.asarray(a)] == np.asarray(f)))  # noqa: E731
    return {"train_accuracy": acc(train_argmins, train_fixed),
            "accuracy": acc(eval_argmins, eval_fixed), "classifier": clf[:num_latents]}


# -- both, from a function that encodes factor indices ------------------------------------------
def measure(code_of: Callable[[np.ndarray], np.ndarray], names, sizes, samples: int = 10000,
            votes: int = 800, group: int = 100, bins: int = 20, threshold: float = 0.01,
            seed: int = 0) -> dict:
    """MIG on ``samples`` uniform draws of the factors; the FactorVAE metric on ``votes`` votes
    (the first half fit the classifier, the rest score it) of ``group`` images each, latents
    scaled by their standard deviation over the ``samples`` codes and pruned where the
    variance is at most ``threshold``. ``code_of`` maps (n, K) factor indices to (n, D) codes."""
    rng = np.random.default_rng(seed)
    names, sizes = list(names), [int(s) for s in sizes]
    f = np.stack([rng.integers(0, s, samples) for s in sizes], axis=1).astype(np.int64)
    codes = np.asarray(code_of(f), dtype=np.float64)
    m = mig(codes, f, bins)
    var = codes.var(0, ddof=1)
    active = var > threshold
    scale = np.sqrt(np.where(active, var, 1.0))
    vf, fixed = vote_factors(sizes, votes, group, rng)
    d = codes.shape[1]
    argmins = vote_argmins(np.asarray(code_of(vf.reshape(-1, len(sizes))),
                                      dtype=np.float64).reshape(votes, group, d), scale, active)
    n_fit = votes // 2
    fv = factorvae_score(argmins[:n_fit], fixed[:n_fit], argmins[n_fit:], fixed[n_fit:], d,
                         len(sizes))
    return {
        "mig": m["mig"],
        "factorvae_metric": fv["accuracy"],
        "disentanglement": {
            "factors": names,
            "mig_per_factor": dict(zip(names, _round(m["per_factor"]))),
            "mutual_info": [_round(row) for row in m["mutual_info"]],   # latent x factor, nats
            "factor_entropy": dict(zip(names, _round(m["factor_entropy"]))),
            "factorvae_train_accuracy": fv["train_accuracy"],
            "factorvae_classifier": [names[k] if active[j] else None
                                     for j, k in enumerate(fv["classifier"])],
            "active_latents": int(active.sum()),
            "latent_dims": d,
            "samples": samples, "bins": bins, "votes_fit": n_fit, "votes_eval": votes - n_fit,
            "group": group, "threshold": threshold, "seed": seed,
        },
    }


def _round(a) -> list:
    return [round(float(v), 5) for v in np.asarray(a).ravel()]


def expected_images(samples: int, votes: int, group: int) -> int:
    """How many images :func:`measure` encodes (for a progress bar)."""
    return samples + votes * group

