"""``python -m vae_train.evaluate run=<run dir> [k=5000] [split=test] [...]``

The importance-sampled log-likelihood of a trained run, with its ELBO, active units and the
KL per latent dimension; written to ``eval.json`` in the run directory (``eval_<split>.json``
for other splits), printed as a table, and logged to the run's TensorBoard.

    log p(x) ~ logsumexp_i(log p(x, z_i) - log q(z_i | x)) - log k,   z_i ~ q(z | x)

is the importance-weighted bound with k samples; it approaches log p(x) from below as k grows
(Burda et al. 2016). Examples are batched and the k samples chunked, so at most ``max_batch``
(example, sample) pairs are decoded at once and memory stays bounded whatever k is.

For data sets generated from known factors (``dataset=dsprites``) it also scores the code
(the posterior mean of the code layer) with the mutual information gap (``mig``) and the
FactorVAE metric (``factorvae_metric``) on images rendered from freshly drawn factors; see
:mod:`vae_train.disentangle`.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vae_train.data import Split
from vae_train.disentangle import expected_images, measure, model_code_fn
from vae_train.errors import UserError
from vae_train.files import write_json
from vae_train.runs import command, load_run, parse_args, pick_split

DEFAULTS = {
    "run": "???",        # the run directory
    "k": 5000,           # importance samples per example
    "split": "test",     # test | val | train
    "checkpoint": "best",  # best | last | a .pt path
    "n": None,           # only the first n examples of the split (None: all)
    "batch_size": 100,   # examples per batch
    "max_batch": None,   # (example, sample) pairs decoded at once (None: 2048 on a CPU,
                         # 16384 on an accelerator): bounds memory
    "threshold": 0.01,   # active unit: Cov_x(E_q[z_d]) above this (Burda et al.)
    "device": "auto",
    "seed": 0,
    "progress": True,
    "dataset.root": None,  # where the data is now, if it moved since training
    # data sets with known factors (dsprites): disentanglement of the code
    "metric_samples": 10000,  # images for MIG and the latents' spread (0: skip the metrics)
    "mig_bins": 20,           # equal-width bins per latent for MIG
    "factorvae_votes": 800,   # FactorVAE votes: the first half fit the classifier, the rest score
    "factorvae_l": 100,       # images per vote (L)
}
# The default max_batch on a CPU. For the 784-400-20 MLP VAE at k=5000 on a 2-core AMD EPYC, per
# example: 1024 to 4096 pairs within 5% of each other, 256 25% slower, 16384 (the old default) 2.2x.
CPU_MAX_BATCH = 2048
USAGE = ("usage: python -m vae_train.evaluate run=<run dir> [k=5000] [split=test] "
         "[checkpoint=best] [n=N] [batch_size=100] [max_batch=2048|16384] [threshold=0.01] "
         "[device=auto] [seed=0] [progress=true] [dataset.root=PATH] [metric_samples=10000] "
         "[mig_bins=20] [factorvae_votes=800] [factorvae_l=100]")


def sample_chunks(k: int, chunk: int) -> list[int]:
    """k split into the fewest chunks of at most ``chunk``, as equal as they can be (one
    shape for all but the last few calls: oneDNN and the allocator reuse what they made)."""
    n = -(-k // max(1, chunk))
    return [k // n + (i < k % n) for i in range(n)]


@torch.inference_mode()
def log_likelihood(model, x: torch.Tensor, y: torch.Tensor | None, k: int,
                   max_batch: int = 16384) -> torch.Tensor:
    """The k-sample importance-weighted estimate of log p(x) per example, in chunks of
    samples for all of ``x`` at once (at most ``max_batch`` pairs, at least one sample);
    logsumexp over chunks of per-chunk logsumexps is exact."""
    parts = []
    for kk in sample_chunks(k, max(1, max_batch // len(x))):
        out = model.infer(x, y, k=kk, analytic_kl=False)
        parts.append(torch.logsumexp(out["log_px"] + out["log_pz"] - out["log_qz"], dim=0))
    return torch.logsumexp(torch.stack(parts), dim=0) - math.log(k)


def default_max_batch(device) -> int:
    """(example, sample) pairs per decoder call: cache-sized tiles on a CPU, where the
    784-wide elementwise work of the likelihood is memory-bound above a few MB; large ones
    on an accelerator."""
    return CPU_MAX_BATCH if torch.device(device).type == "cpu" else 16384


def _onednn_linear_forward(lin: nn.Linear):
    """A forward for ``lin`` through oneDNN's fp32 matmul with a pre-packed weight; None if
    the op is missing or disagrees with F.linear. Gradients and other dtypes or devices go
    to F.linear."""
    weight, bias = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, CPU_MAX_BATCH)

        def forward(x):
            if (torch.is_grad_enabled() or x.dtype != torch.float32
                    or x.device.type != "cpu" or x.dim() < 2):
                return F.linear(x, lin.weight, lin.bias)
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

        probe = torch.randn(3, lin.in_features, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            got = forward(probe).double()
            ref = F.linear(probe.double(), weight.double(),
                           None if bias is None else bias.double())
        scale = probe.abs().double() @ weight.abs().double().T + 1.0
        if got.shape != ref.shape or not bool(((got - ref).abs() <= 1e-5 * scale).all()):
            return None
        return forward
    except Exception:       # no oneDNN in this build, an op renamed: keep F.linear
        return None


@contextlib.contextmanager
def fast_linears(model):
    """While inside: on a CPU in float32, every ``nn.Linear`` of ``model`` multiplies with
    oneDNN, which uses the CPU's AVX-512 units where MKL's sgemm (PyTorch's default) runs
    its AVX2 kernels on AMD processors (about 2x, the same fp32 products in another order:
    results agree to ~1e-6). Restored on exit; elsewhere nothing changes."""
    patched = []
    try:
        if torch.backends.mkldnn.is_available():
            for m in model.modules():
                if (type(m) is nn.Linear and m.weight.device.type == "cpu"
                        and m.weight.dtype == torch.float32 and "forward" not in vars(m)):
                    forward = _onednn_linear_forward(m)
                    if forward is not None:
                        m.forward = forward
                        patched.append(m)
        yield len(patched)
    finally:
        for m in patched:
            del m.forward


def active_units(means: list[torch.Tensor], threshold: float) -> list[int]:
    """Per layer: how many dimensions have Cov_x(E_q[z_d]) > threshold."""
    return [int((m.var(dim=0, unbiased=True) > threshold).sum()) for m in means]


@torch.no_grad()
def evaluate(model, batches, k: int, max_batch: int, threshold: float, total: int | None = None,
             progress: bool = True) -> dict:
    """Over an iterable of (x, y) batches (``total`` examples, for the progress bar): for
    models with ``infer`` (a likelihood bound) the NLL, ELBO, active units and KL per
    dimension; for models with ``evaluate_batch`` (sums of per-example numbers) and
    ``evaluate_summary`` their own metrics, too.

    The NLL takes a few examples at a time with many samples each (``max_batch // k``
    examples, at least one), so the encoder runs once per example and chunk, not once per
    chunk for the whole batch, and a decoder call's tensors stay in the cache."""
    has_nll = hasattr(model, "infer")
    sums = {"ll": 0.0, "elbo": 0.0, "recon": 0.0, "kl": 0.0}
    extra: dict[str, torch.Tensor] = {}
    kl_dims, means, n = None, None, 0
    y_of = (lambda y: y) if model.conditional else (lambda y: None)
    desc = f"evaluate k={k}" if has_nll else "evaluate"
    group = max(1, max_batch // k)
    with tqdm(total=total, desc=desc, unit="ex", leave=False,
              disable=None if progress else True) as bar, fast_linears(model):
        for x, y in batches:
            if hasattr(model, "evaluate_batch"):
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
    if hasattr(model, "evaluate_summary"):
        own = model.evaluate_summary(extra, n)
        result.update(own)
        result["model_metrics"] = list(own)
    return result


def disentanglement(model, grid, device, args) -> dict:
    """MIG and the FactorVAE metric of the model's code on the data set's factor grid."""
    samples, votes = int(args.metric_samples), int(args.factorvae_votes)
    group = int(args.factorvae_l)
    start = time.perf_counter()
    with tqdm(total=expected_images(samples, votes, group), desc="disentanglement",
              unit="img", leave=False, disable=None if args.progress else True) as bar:
        code_of = model_code_fn(model, grid, device, max(int(args.batch_size), 256), bar.update)
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
            (f"NLL (k={result['k']})", f"{result['nll']:.2f} nats"),
            ("-ELBO", f"{-result['elbo']:.2f} nats  (recon {result['recon']:.2f}, "
                      f"kl {result['kl']:.2f})"),
            ("gap (-ELBO - NLL)", f"{-result['elbo'] - result['nll']:.2f} nats"),
            ("active units", au),
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


@command
def main(argv):
    args = parse_args(argv, DEFAULTS, USAGE)
    for key, low in (("k", 1), ("n", 2), ("batch_size", 1), ("max_batch", 1),
                     ("metric_samples", 0), ("mig_bins", 2), ("factorvae_votes", 2),
                     ("factorvae_l", 2)):
        value = args[key]
        if value is not None and (not isinstance(value, int) or value < low):
            raise UserError(f"{key}={value} is invalid: it must be an integer >= {low}"
                            + (" (active units need a variance over examples)" if key == "n" else ""))
    if args.metric_samples == 1:
        raise UserError("metric_samples=1 is invalid: it must be 0 (skip the disentanglement "
                        "metrics) or at least 2 (the latents' spread needs a variance)")
    run = load_run(args.run, args.checkpoint, args.device, args["dataset.root"])
    split = pick_split(run, args.split)
    bs = int(args.batch_size)
    n = len(split) if args.n is None else min(int(args.n), len(split))
    if n < 2:
        raise UserError(f"split={args.split} has {n} example; evaluation needs at least 2")
    torch.manual_seed(int(args.seed))

    batches = run.data.eval_batches(Split(split.x[:n], split.y[:n]), bs)
    start = time.perf_counter()
    max_batch = default_max_batch(run.device) if args.max_batch is None else int(args.max_batch)
    result = evaluate(run.model, batches, int(args.k), max_batch, float(args.threshold),
                      total=n, progress=bool(args.progress))
    result.update(split=args.split, seconds=time.perf_counter() - start,
                  checkpoint=str(args.checkpoint), epoch=run.state.get("epoch"),
                  conditional=bool(run.model.conditional), max_batch=max_batch)
    notes = []
    if run.model.conditional:
        notes.append("conditional model: nll estimates -log p(x | y)")
    if ("nll" in result and run.cfg.loss.get("likelihood") == "bernoulli"
            and run.cfg.dataset.binarize == "none" and not _binary(split.x[:n])):
        notes.append("Bernoulli likelihood of grey levels (dataset.binarize=none) is not a "
                     "normalised density: compare this nll with the classic example's loss, not "
                     "with papers (train with dataset.binarize=dynamic for that)")
    grid = getattr(run.data, "factor_grid", None)
    if grid is not None and args.metric_samples:
        if not hasattr(run.model, "code"):
            notes.append(f"disentanglement metrics skipped: {type(run.model).__name__} has no "
                         "continuous code (model.code) to score")
        else:
            result.update(disentanglement(run.model, grid, run.device, args))
            result["seconds"] += result["disentanglement"]["seconds"]
    if notes:
        result["note"] = "; ".join(notes)
    name = "eval.json" if args.split == "test" else f"eval_{args.split}.json"
    write_json(run.run_dir / name, result)
    from vae_train.logging import TBLogger

    tb = TBLogger(run.run_dir)
    scalars = {name: result[name] for name in result.get("model_metrics", [])
               if isinstance(result[name], (int, float))}
    if "nll" in result:
        scalars.update({f"nll_k{args.k}": result["nll"], "elbo": result["elbo"],
                        "active_units": result["active_units"]})
    if "mig" in result:
        scalars.update({"mig": result["mig"], "factorvae_metric": result["factorvae_metric"]})
    tb.scalars(f"eval_{args.split}", scalars, run.step)
    tb.close()
    print_table(result)
    for note in notes:
        print(f"  note: {note}")
    print(f"wrote {run.run_dir / name}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
