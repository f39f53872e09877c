"""``python -m vae_train.evaluate run=<run dir> [k=5000] [split=test] [...]`` (a Hydra app:
options and defaults in ``configs/commands/evaluate.yaml``; ``--help`` lists them).

The importance-sampled log-likelihood of a trained run, with its ELBO, active units and the
KL per latent dimension; written to ``eval.json`` in the run directory (``eval_<split>.json``
for other splits), printed as a table, and logged to the run's TensorBoard.

    log p(x) ~ logsumexp_i(log p(x, z_i) - log q(z_i | x)) - log k,   z_i ~ q(z | x)

is the importance-weighted bound with k samples; it approaches log p(x) from below as k grows
(Burda et al. 2016). Examples are batched and the k samples chunked, so at most ``max_batch``
(example, sample) pairs are decoded at once and memory stays bounded whatever k is.

Every option is checked before the run is loaded (:data:`CHECKS`: types, ranges, upper bounds
that keep time and memory bounded), and the run directory must be writable before the
evaluation starts. Once the model is loaded, the memory the largest decode needs (``max_batch``
pairs, or a batch of ``batch_size`` examples) is estimated from a probe of one example
(:func:`bytes_per_pair`) and what cannot fit is refused in one line with the estimate.

With ``fid=true`` it also scores ``fid_n`` prior samples against the split: FID, KID and
precision/recall in the features of Inception or of a network trained on the run's own labels
(``fid_features``), written under ``fid_inception`` or ``fid_own``; see :mod:`vae_train.fid`.
A model that cannot draw, or a feature network that cannot be had (offline without cached
Inception weights, a data set without labels), is noted in one line and the rest is computed.

For data sets generated from known factors (``dataset=dsprites``) it also scores the code
(the posterior mean of the code layer) with the mutual information gap (``mig``) and the
FactorVAE metric (``factorvae_metric``) on images rendered from freshly drawn factors; see
:mod:`vae_train.disentangle`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vae_train.checks import BOOLEAN, number, one_of, optional
from vae_train.data import FactorGrid, to_float
from vae_train.device import DEVICE_CHECKS
from vae_train.disentangle import expected_images, measure
from vae_train.distributions import bits_per_dim
from vae_train.errors import UserError
from vae_train.fid import Unavailable, describe, require, sample_quality
from vae_train.files import write_json
from vae_train.logging import TBLogger
from vae_train.memory import bytes_per_pair, check_memory
from vae_train.models.base import ExtraMetrics, HasCode, LatentVariable, layer_slices_of
from vae_train.options import PATH, SEED, check_options, check_output, count
from vae_train.patches import fast_linears
from vae_train.api import default_max_batch, load, log_likelihood
from vae_train.runs import hydra_app

USAGE = ("usage: python -m vae_train.evaluate run=<run dir> [k=5000] [split=test] "
         "[checkpoint=best] [n=N] [...] (--help lists every option)")
# Upper bounds that keep time and memory bounded whatever is asked for. The importance-weighted
# bound gains little beyond 10^4 samples (Burda et al. use 5000); the disentanglement metrics
# hold their factors and codes in memory (float64, one row per image).
K_MAX = 10**6
METRIC_SAMPLES_MAX = 10**6
VOTE_IMAGES_MAX = 10**6       # factorvae_votes x factorvae_l
MIG_BINS_MAX = 10**4
# Sample quality: 50,000 samples is the largest FID in common use (FID-50k); the features of
# three sets of that many stay in memory (2048 float64 each for Inception: 2.5 GB).
FID_N_MAX = 50000
FID_EPOCHS_MAX = 1000
KID_SUBSETS_MAX = 10**4
PR_K_MAX = 100

# The rules of the options (configs/commands/evaluate.yaml); every option has one, and all run
# before anything is loaded.
CHECKS = {"run": PATH, "checkpoint": PATH,
          "k": count(1, K_MAX, f"an integer in [1, {K_MAX}] (samples per example; the bound "
                               "gains little beyond 10^4)"),
          "split": one_of("test", "val", "train"),
          "n": optional(count(2, what="an integer >= 2 (active units need a variance over "
                                      "examples)"), "null (all) or an integer >= 2"),
          "batch_size": count(1), "max_batch": optional(count(1), "null or an integer >= 1"),
          "threshold": number(0),
          "metric_samples": count(0, METRIC_SAMPLES_MAX),
          "mig_bins": count(2, MIG_BINS_MAX),
          "factorvae_votes": count(2, VOTE_IMAGES_MAX), "factorvae_l": count(2, VOTE_IMAGES_MAX),
          "seed": SEED, "device": DEVICE_CHECKS["type"], "progress": BOOLEAN,
          "trust_run_code": BOOLEAN,
          "dataset.root": optional(PATH, "null or a path"),
          "fid": BOOLEAN,
          "fid_n": count(2, FID_N_MAX, f"an integer in [2, {FID_N_MAX}] (samples, and real "
                                       "images, compared)"),
          "fid_features": one_of("auto", "inception", "own"),
          "fid_epochs": count(1, FID_EPOCHS_MAX),
          "fid_batch_size": count(1, FID_N_MAX),
          "fid_floor": BOOLEAN,
          "kid_subsets": count(1, KID_SUBSETS_MAX),
          "kid_subset_size": count(2, FID_N_MAX),
          "pr_k": count(0, PR_K_MAX, f"an integer in [0, {PR_K_MAX}] (0: no precision/recall)")}


# A latent dimension "carries information" when its mean KL exceeds this many nats.
KL_UNIT = 0.01


def active_units(means: list[torch.Tensor], threshold: float) -> list[int]:
    """Per layer: how many dimensions have Cov_x(E_q[z_d]) > threshold."""
    return [int((m.var(dim=0, unbiased=True) > threshold).sum()) for m in means]


@torch.no_grad()
def evaluate(model, batches, k: int, max_batch: int, threshold: float, total: int | None = None,
             progress: bool = True) -> dict:
    """Over an iterable of (x, y) batches (``total`` examples, for the progress bar): for a
    ``LatentVariable`` model (a likelihood bound) the NLL, ELBO, active units and KL per
    dimension; for an ``ExtraMetrics`` model its own metrics too (sums of per-example numbers
    from ``evaluate_batch``, then ``evaluate_summary``).

    The NLL takes a few examples at a time with many samples each (``max_batch // k``
    examples, at least one), so the encoder runs once per example and chunk, not once per
    chunk for the whole batch, and a decoder call's tensors stay in the cache."""
    has_nll = isinstance(model, LatentVariable)
    sums = {"ll": 0.0, "elbo": 0.0, "recon": 0.0, "kl": 0.0}
    extra: dict[str, torch.Tensor] = {}
    kl_dims, means, n = None, None, 0
    y_of = (lambda y: y) if model.conditional else (lambda y: None)
    desc = f"evaluate k={k}" if has_nll else "evaluate"
    group = max(1, max_batch // k)
    with tqdm(total=total, desc=desc, unit="ex", leave=False,
              disable=None if progress else True) as bar, fast_linears(model):
        for x, y in batches:
            if isinstance(model, ExtraMetrics):
                for name, v in model.evaluate_batch(x, y).items():
                    extra[name] = extra[name] + v.double() if name in extra else v.double()
            n += len(x)
            if not has_nll:
                bar.update(len(x))
                continue
            y = y_of(y)
            for i in range(0, len(x), group):
                ll = log_likelihood(model, x[i:i + group], None if y is None else
                                    y[i:i + group], k, max_batch)
                sums["ll"] += ll.sum().item()
                bar.update(len(ll))
            one = model.infer(x, y, k=1, analytic_kl=True)
            recon = -one["log_px"][0]
            kl_b = one["kl_dims"][0]
            sums["recon"] += recon.sum().item()
            sums["kl"] += kl_b.sum().item()
            sums["elbo"] += -(recon + kl_b.sum(-1)).sum().item()
            kl_dims = kl_b.sum(0) if kl_dims is None else kl_dims + kl_b.sum(0)
            layer_means = [m.float().cpu() for m in model.latent_means(x, y)]
            means = [[m] for m in layer_means] if means is None else \
                [acc + [m] for acc, m in zip(means, layer_means)]
    result: dict = {"n": n}
    if has_nll:
        means = [torch.cat(m) for m in means]
        units = active_units(means, threshold)
        result.update({
            "nll": -sums["ll"] / n,
            "elbo": sums["elbo"] / n,
            "recon": sums["recon"] / n,
            "kl": sums["kl"] / n,
            "k": k,
            "active_units": sum(units),
            "active_units_per_layer": units,
            "latent_dims_per_layer": [m.shape[1] for m in means],
            "kl_per_dim": [round(v, 5) for v in (kl_dims / n).tolist()],
        })
        # Per stochastic layer: its KL, and its dimensions that carry more than KL_UNIT nats.
        # In a top-down hierarchy a lower layer's posterior mean moves with the layers above
        # even when the layer adds nothing (q = p), so Burda's active units can overstate it
        # (and a layer whose means stay put while its variances differ from the prior's has
        # KL without active units); the KL says what the layer itself holds.
        per_dim = kl_dims.double() / n
        slices = layer_slices_of(model, len(per_dim))
        dims = result["latent_dims_per_layer"]
        if len(slices) == 1 and len(dims) > 1 and sum(dims) == len(per_dim):
            # several layers without the Hierarchy capability (video_vae: content, dynamics):
            # their KL dims follow latent_means' order
            ends = np.cumsum(dims).tolist()
            slices = [slice(e - d, e) for d, e in zip(dims, ends)]
        result["kl_per_layer"] = [round(float(per_dim[sl].sum()), 4) for sl in slices]
        result["kl_units_per_layer"] = [int((per_dim[sl] > KL_UNIT).sum()) for sl in slices]
    if isinstance(model, ExtraMetrics):
        own = model.evaluate_summary(extra, n)
        result.update(own)
        result["model_metrics"] = list(own)
    return result


def model_code_fn(model, grid: FactorGrid, device, batch_size: int = 500,
                  progress: Callable | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``code_of`` for :func:`vae_train.disentangle.measure`: render the factors' images,
    encode them with ``model.code`` (the posterior mean of the code layer) in batches;
    conditional models get the label factor as y. ``progress(n)`` is called with each
    batch's size."""

    @torch.no_grad()
    def code_of(factors: np.ndarray) -> np.ndarray:
        out = []
        for a in range(0, len(factors), batch_size):
            f = factors[a:a + batch_size]
            x = to_float(grid.render(f)).to(device)
            y = None
            if model.conditional and grid.label_factor is not None:
                y = torch.as_tensor(f[:, grid.label_factor]).to(device)
            out.append(model.code(x, y).float().flatten(1).cpu())
            if progress is not None:
                progress(len(f))
        return torch.cat(out).double().numpy()

    return code_of


# Images rendered and encoded at once for the disentanglement metrics (a code does not depend on
# the batch it was computed in).
CODE_BATCH = 1024


def disentanglement(model, grid, device, args) -> dict:
    """MIG and the FactorVAE metric of the model's code on the data set's factor grid."""
    samples, votes = int(args.metric_samples), int(args.factorvae_votes)
    group = int(args.factorvae_l)
    start = time.perf_counter()
    with tqdm(total=expected_images(samples, votes, group), desc="disentanglement",
              unit="img", leave=False, disable=None if args.progress else True) as bar:
        code_of = model_code_fn(model, grid, device, CODE_BATCH, bar.update)
        out = measure(code_of, grid.names, grid.sizes, samples=samples, votes=votes,
                      group=group, bins=int(args.mig_bins), threshold=float(args.threshold),
                      seed=int(args.seed))
    out["disentanglement"]["seconds"] = time.perf_counter() - start
    return out


def print_table(result: dict, file=None) -> None:
    file = file or sys.stdout
    rows = [("examples", f"{result['n']} ({result['split']})")]
    if "nll" in result:
        layers = result["latent_dims_per_layer"]
        au = " + ".join(f"{a}/{d}" for a, d in zip(result["active_units_per_layer"], layers))
        kl = sorted(result["kl_per_dim"], reverse=True)
        rows += [
            (f"NLL (k={result['k']})", f"{result['nll']:.2f} nats" + (
                f"  ({result['bpd']:.3f} bits/dim)" if result.get("bpd_of") == "nll" else "")),
            ("-ELBO", f"{-result['elbo']:.2f} nats  (recon {result['recon']:.2f}, "
                      f"kl {result['kl']:.2f})"),
            ("gap (-ELBO - NLL)", f"{-result['elbo'] - result['nll']:.2f} nats"),
            ("active units", au),
            *([("KL per layer", " + ".join(f"{v:.2f}" for v in result["kl_per_layer"])
                + " nats  (units above 0.01 nats: " + " + ".join(
                    f"{u}/{d}" for u, d in zip(result["kl_units_per_layer"], layers)) + ")")]
              if len(result.get("kl_per_layer", [])) > 1 else []),
            ("largest KL per dim",
             ", ".join(f"{v:.2f}" for v in kl[:8]) + (" ..." if len(kl) > 8 else "")),
        ]
    if "mig" in result:
        d = result["disentanglement"]
        per = ", ".join(f"{k} {v:.2f}" for k, v in d["mig_per_factor"].items())
        fit = (f"fit votes {d['factorvae_train_accuracy']:.3f}; "
               f"{d['active_latents']}/{d['latent_dims']} latents active")
        rows += [("MIG", f"{result['mig']:.3f}  ({per})"),
                 ("FactorVAE metric", f"{result['factorvae_metric']:.3f}  ({fit})")]
    for key in ("fid_inception", "fid_own"):
        if key in result:
            rows += describe(key, result[key])
    for name in result.get("model_metrics", []):
        value = result[name]
        rows.append((name.replace("_", " "), f"{value:.4g}" if isinstance(value, float)
                     else str(value)))
    rows.append(("time", f"{result['seconds']:.1f} s"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", file=file)


def _binary(x: torch.Tensor) -> bool:
    """Images whose pixels are all 0 or 255 (dsprites): a Bernoulli likelihood is a density."""
    return x.dtype == torch.uint8 and bool(((x == 0) | (x == 255)).all())


@hydra_app("evaluate", USAGE, path_keys=("run", "checkpoint", "dataset.root"))
def main(args):
    check_options(args, CHECKS)
    if args.metric_samples == 1:
        raise UserError("metric_samples=1 is invalid: it must be 0 (skip the disentanglement "
                        "metrics) or at least 2 (the latents' spread needs a variance)")
    if args.factorvae_votes * args.factorvae_l > VOTE_IMAGES_MAX:
        raise UserError(f"factorvae_votes={args.factorvae_votes} x factorvae_l="
                        f"{args.factorvae_l} = {args.factorvae_votes * args.factorvae_l} images "
                        f"is invalid: at most {VOTE_IMAGES_MAX} (the default is 800 x 100)")
    if args.fid:
        require("torchmetrics", *(["torch_fidelity"] if args.fid_features == "inception"
                                  else []))
    # eval.json goes into the run directory: find out now, not after the evaluation.
    run_dir = Path(str(args.run)).expanduser()
    name = "eval.json" if args.split == "test" else f"eval_{args.split}.json"
    if (run_dir / ".hydra").is_dir():
        check_output(run_dir, f"run={args.run} (where {name} is written)")
        if (run_dir / name).is_dir():
            raise UserError(f"run={args.run}: {run_dir / name} is a folder; {name} cannot be "
                            "written there (move the folder away)")
    run = load(args.run, args.checkpoint, args.device, args.dataset.root,
               trust_run_code=args.trust_run_code)
    split = run.data.eval_split(args.split)
    bs = int(args.batch_size)
    n = len(split) if args.n is None else min(int(args.n), len(split))
    if n < 2:
        raise UserError(f"split={args.split} has {n} example; evaluation needs at least 2")
    max_batch = default_max_batch(run.device) if args.max_batch is None else int(args.max_batch)
    x, y = next(iter(run.data.eval_batches(split.part(0, 1), 1)))
    asked = {f"batch_size={bs}": (min(bs, n), "examples")}
    if isinstance(run.model, LatentVariable):
        asked[f"max_batch={max_batch}"] = (max_batch, "(example, sample) pairs")
    if args.fid:
        asked[f"fid_batch_size={args.fid_batch_size}"] = (int(args.fid_batch_size), "samples")
    check_memory(bytes_per_pair(run.model, x, y), asked, run.device)
    torch.manual_seed(int(args.seed))

    batches = run.data.eval_batches(split.part(0, n), bs)
    start = time.perf_counter()
    result = evaluate(run.model, batches, int(args.k), max_batch, float(args.threshold),
                      total=n, progress=bool(args.progress))
    result.update(split=args.split, seconds=time.perf_counter() - start,
                  checkpoint=str(args.checkpoint), epoch=run.state.get("epoch"),
                  conditional=bool(run.model.conditional), max_batch=max_batch)
    if run.data.values == "8bit":    # bits per dimension: of the NLL, else of the -ELBO
        source = "nll" if "nll" in result else "elbo" if "elbo" in result else None
        if source is not None:
            nats = result["nll"] if source == "nll" else -result["elbo"]
            result.update(bpd=bits_per_dim(nats, run.data.shape), bpd_of=source)
    notes = []
    if run.model.conditional:
        notes.append("conditional model: nll estimates -log p(x | y)")
    if ("nll" in result and run.cfg.loss.get("likelihood") == "bernoulli"
            and run.cfg.dataset.binarize == "none"
            and not _binary(split.read(0, n if split.in_memory else min(n, 10000)))):
        notes.append("Bernoulli likelihood of grey levels (dataset.binarize=none) is not a "
                     "normalised density: compare this nll with the classic example's loss, not "
                     "with papers (train with dataset.binarize=dynamic for that)")
    grid = run.data.factor_grid
    if grid is not None and args.metric_samples:
        if not isinstance(run.model, HasCode):
            notes.append(f"disentanglement metrics skipped: {type(run.model).__name__} has no "
                         "continuous code (model.code) to score")
        else:
            result.update(disentanglement(run.model, grid, run.device, args))
            result["seconds"] += result["disentanglement"]["seconds"]
    if args.fid:
        try:
            key, rec = sample_quality(
                run, args.split, int(args.fid_n), str(args.fid_features), int(args.fid_epochs),
                int(args.fid_batch_size), int(args.seed), int(args.kid_subsets),
                int(args.kid_subset_size), int(args.pr_k), bool(args.fid_floor),
                bool(args.progress), log=lambda line: print(line, file=sys.stderr))
            result[key] = rec
            result["seconds"] += rec["seconds"]
            if "inception_unavailable" in rec:
                notes.append(f"fid with the own feature network: {rec['inception_unavailable']}")
        except Unavailable as e:
            result["fid_skipped"] = str(e)
            notes.append(f"fid skipped: {e}")
    if notes:
        result["note"] = "; ".join(notes)
    write_json(run.run_dir / name, result)
    tb = TBLogger(run.run_dir)
    scalars = {name: result[name] for name in result.get("model_metrics", [])
               if isinstance(result[name], (int, float))}
    if "nll" in result:
        scalars.update({f"nll_k{args.k}": result["nll"], "elbo": result["elbo"],
                        "active_units": result["active_units"]})
    if "bpd" in result:
        scalars["bpd"] = result["bpd"]
    if "mig" in result:
        scalars.update({"mig": result["mig"], "factorvae_metric": result["factorvae_metric"]})
    for key in ("fid_inception", "fid_own"):
        if key in result:
            kind = key[len("fid_"):]
            scalars.update({f"fid_{kind}": result[key]["fid"],
                            f"kid_{kind}": result[key]["kid_mean"]})
    tb.scalars(f"eval_{args.split}", scalars, run.step)
    tb.close()
    print_table(result)
    for note in notes:
        print(f"  note: {note}")
    print(f"wrote {run.run_dir / name}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
