"""``python -m vae_train.score run=<run dir> [statistic=neg_elbo] [fpr=0.05] [anomalies=[c,...]]
[data=OTHER] [...]`` (a Hydra app: options and defaults in ``configs/commands/score.yaml``;
``--help`` lists them).

Anomaly and out-of-distribution scores of a trained run. Each example of the scored split
(``split=test``) gets a score by the chosen statistic, higher meaning more anomalous:

- ``nll``: -log p(x), importance sampled with ``k`` samples (:func:`vae_train.api.log_likelihood`);
- ``neg_elbo``: the negative ELBO (one posterior sample, analytic KL where it has one);
- ``recon_error``: the summed squared error of the reconstruction (every model has one).

A threshold is set on the run's validation split, which holds normal data only: the
(1 - ``fpr``) quantile of its scores, so about a fraction ``fpr`` of normal examples score
above it; the scored examples above it are flagged. When the data say which examples are
anomalies (``anomalies=[c,...]``: these labels are anomalous; ``data=OTHER``: the other data
set's test split is, the run's own test split is normal: the out-of-distribution case), the
command also reports AUROC and AUPRC (:func:`auroc`, :func:`average_precision`), the true
positive rate at the threshold, and draws the ROC curve.

Written to ``<run>/score/<name>.json`` (the summary), ``<name>_scores.csv`` (one row per
scored example) and ``<name>_roc.png``; printed as a table; the AUROC and AUPRC are logged to
the run's TensorBoard under ``score_<name>/``.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vae_train.api import (data_option, default_max_batch, load, log_likelihood_by_groups,
                           per_example)
from vae_train.checks import BOOLEAN, CLASS_LABELS, Rule, number, one_of, optional
from vae_train.device import DEVICE_CHECKS
from vae_train.errors import UserError
from vae_train.files import write_bytes, write_json
from vae_train.logging import TBLogger
from vae_train.memory import bytes_per_pair, check_memory
from vae_train.options import PATH, SEED, check_options, check_output, count
from vae_train.patches import fast_linears
from vae_train.runs import hydra_app

USAGE = ("usage: python -m vae_train.score run=<run dir> [statistic=neg_elbo|nll|recon_error] "
         "[fpr=0.05] [anomalies=[c,...]] [data=OTHER] [...] (--help lists every option)")
STATISTICS = ("nll", "neg_elbo", "recon_error")
K_MAX = 10**6


NAME = Rule(lambda v: isinstance(v, str) and v.strip() != "" and "/" not in v
            and "\\" not in v and not v.startswith("."), "a file name (no folders)")

CHECKS = {"run": PATH, "checkpoint": PATH,
          "statistic": one_of(*STATISTICS),
          "k": count(1, K_MAX, f"an integer in [1, {K_MAX}] (importance samples per example)"),
          "fpr": number(0, 1, low_open=True, high_open=True,
                        what="a false-positive rate in (0, 1), e.g. 0.05"),
          "split": one_of("test", "val", "train"),
          "anomalies": optional(CLASS_LABELS,
                                "null or a non-empty list of class labels, e.g. [3] or [1,7]"),
          "data": optional(PATH, "null or a data set option (mnist, fashion_mnist, ...)"),
          "data_root": optional(PATH, "null or a path"),
          "data_path": optional(PATH, "null or a path"),
          "name": optional(NAME, "null or a file name (no folders)"),
          "n": optional(count(1), "null (all) or an integer >= 1"),
          "batch_size": count(1), "max_batch": optional(count(1), "null or an integer >= 1"),
          "seed": SEED, "device": DEVICE_CHECKS["type"], "progress": BOOLEAN,
          "plot": BOOLEAN, "trust_run_code": BOOLEAN,
          "dataset.root": optional(PATH, "null or a path")}


# -- the measures -------------------------------------------------------------------------------
def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, tied values sharing the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # the start of each run of equal values, and its length
    starts = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
    lengths = np.diff(np.concatenate((starts, [len(xs)])))
    mean_rank = starts + (lengths + 1) / 2.0          # ranks start+1 .. start+length
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, lengths)
    return ranks


def _check_two_kinds(labels: np.ndarray) -> tuple[int, int]:
    pos = int(labels.sum())
    neg = int(len(labels) - pos)
    if pos == 0 or neg == 0:
        raise UserError(f"the scored examples hold {pos} anomalies and {neg} normal ones; "
                        "AUROC and AUPRC need both (check anomalies=[...] against the labels)")
    return pos, neg


def auroc(scores, labels) -> float:
    """The area under the ROC curve: the probability that an anomaly (label 1) scores above a
    normal example (label 0), ties counting one half (Mann-Whitney U from average ranks)."""
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels).astype(bool)
    pos, neg = _check_two_kinds(lab)
    r = average_ranks(s)
    return float((r[lab].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _counts_at_thresholds(scores, labels):
    """Over the distinct scores from the highest down: true and false positives when every
    example scoring at least that value is flagged (tied examples enter together)."""
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels).astype(bool)
    order = np.argsort(-s, kind="mergesort")
    s, lab = s[order], lab[order]
    last = np.flatnonzero(np.concatenate((s[1:] != s[:-1], [True])))   # end of each tie group
    tp = np.cumsum(lab)[last]
    fp = np.cumsum(~lab)[last]
    return s[last], tp.astype(np.float64), fp.astype(np.float64)


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates, thresholds), from (0, 0) to (1, 1), one
    point per distinct score; the trapezoid area under it equals :func:`auroc`."""
    lab = np.asarray(labels).astype(bool)
    pos, neg = _check_two_kinds(lab)
    thr, tp, fp = _counts_at_thresholds(scores, lab)
    return (np.concatenate(([0.0], fp / neg)), np.concatenate(([0.0], tp / pos)),
            np.concatenate(([np.inf], thr)))


def trapezoid_auc(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def average_precision(scores, labels) -> float:
    """The area under the precision-recall curve as average precision: the sum over distinct
    thresholds of (recall gained) x (precision there), tied examples entering together
    (no interpolation; the fraction of anomalies is what chance scores)."""
    lab = np.asarray(labels).astype(bool)
    pos, _ = _check_two_kinds(lab)
    _, tp, fp = _counts_at_thresholds(scores, lab)
    recall = tp / pos
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))


def threshold_at(val_scores: np.ndarray, fpr: float) -> float:
    """The (1 - fpr) quantile of the normal (validation) scores: a score above it is flagged."""
    return float(np.quantile(np.asarray(val_scores, dtype=np.float64), 1.0 - float(fpr)))


# -- computing the scores ----------------------------------------------------------------------
def score_batch(model, x: torch.Tensor, y: torch.Tensor | None, statistic: str, k: int,
                max_batch: int) -> torch.Tensor:
    """Per-example scores (B,) of one batch, higher = more anomalous."""
    y = y if model.conditional else None
    if statistic == "nll":
        return (-log_likelihood_by_groups(model, x, y, k, max_batch)).float().cpu()
    return per_example(model, x, y)[statistic].float().cpu()


def score_split(model, batches, statistic: str, k: int, max_batch: int, bar) -> tuple:
    """(scores, labels) over (x, y) batches, as numpy arrays."""
    scores, labels = [], []
    for x, y in batches:
        scores.append(score_batch(model, x, y, statistic, k, max_batch).numpy())
        labels.append(y.cpu().numpy())
        bar.update(len(x))
    if not scores:
        return np.zeros(0, np.float64), np.zeros(0, np.int64)
    return np.concatenate(scores).astype(np.float64), np.concatenate(labels).astype(np.int64)


# -- output -----------------------------------------------------------------------------------
def csv_text(rows: dict) -> str:
    """``rows``: columns of equal length (numpy arrays) -> CSV text with a header."""
    names = list(rows)
    lines = [",".join(names)]
    cols = [rows[c] for c in names]
    for vals in zip(*cols):
        lines.append(",".join(repr(float(v)) if isinstance(v, (float, np.floating))
                              else str(v) for v in vals))
    return "\n".join(lines) + "\n"


def roc_png(fpr: np.ndarray, tpr: np.ndarray, point: tuple[float, float], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.2), dpi=110)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=1.6, label="ROC")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance")
    ax.plot([point[0]], [point[1]], "o", color="C3",
            label=f"threshold: FPR {point[0]:.3f}, TPR {point[1]:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def print_table(result: dict, file=None) -> None:
    file = file or sys.stdout
    c = result["counts"]
    k = f" (k={result['k']})" if result["statistic"] == "nll" else ""
    rows = [("statistic", f"{result['statistic']}{k}, higher = more anomalous"),
            ("scored", f"{c['scored']} ({result['scored']})"),
            ("threshold", f"{result['threshold']:.4g} (val {c['val']} examples; FPR asked "
                          f"{result['fpr']:g}, on val {result['fpr_val']:.4f})"),
            ("flagged", f"{c['flagged']} of {c['scored']}")]
    if "auroc" in result:
        rows += [("anomalies", f"{c['anomalies']} ({result['anomaly_source']}), normal "
                               f"{c['normal']}"),
                 ("AUROC", f"{result['auroc']:.4f}"),
                 ("AUPRC", f"{result['auprc']:.4f}  (chance {result['auprc_chance']:.4f})"),
                 ("at the threshold", f"TPR {result['tpr']:.4f}, FPR {result['fpr_test']:.4f}, "
                                      f"precision {result['precision']:.4f}")]
    rows.append(("time", f"{result['seconds']:.1f} s"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", file=file)


def _part(split, n):
    return split if n is None else split.part(0, min(int(n), len(split)))


@hydra_app("score", USAGE, path_keys=("run", "checkpoint", "dataset.root", "data_root",
                                        "data_path"))
def main(args):
    check_options(args, CHECKS)
    statistic, k, fpr = str(args.statistic), int(args.k), float(args.fpr)
    anomalies = None if args.anomalies is None else sorted({int(c) for c in args.anomalies})
    name = args.name or (statistic + (f"_{args.data}" if args.data else "")
                         + (f"_{args.split}" if args.split != "test" else ""))
    run_dir = Path(str(args.run)).expanduser()
    out = run_dir / "score"
    if (run_dir / ".hydra").is_dir():
        check_output(out, f"run={args.run} (where score/{name}.json is written)")
    if args.data:
        data_option(str(args.data))            # a data set option: checked before loading
    run = load(args.run, args.checkpoint, args.device, args.dataset.root,
               trust_run_code=args.trust_run_code)
    if statistic != "recon_error" and not run.has_likelihood:
        raise UserError(f"statistic={statistic}: {type(run.model).__name__} has no likelihood "
                        "bound; use statistic=recon_error")
    if anomalies is not None:
        known = max(run.num_classes, 1)
        wrong = [c for c in anomalies if c >= known]
        if wrong:
            raise UserError(f"anomalies={anomalies}: the run's data have no class {wrong[0]} "
                            f"(labels 0..{known - 1})")
    val = _part(run.data.eval_split("val"), args.n)
    scored = _part(run.data.eval_split(args.split), args.n)
    other = None
    if args.data:
        other_dm = run.data_for(str(args.data), {"root": args.data_root,
                                                   "path": args.data_path})
        other = _part(other_dm.eval_split("test"), args.n)
    if len(val) < 2:
        raise UserError(f"the run's validation split has {len(val)} example(s); the threshold "
                        "needs at least 2 (train with a larger dataset.val_size)")
    if run.conditional and other is not None:
        raise UserError(f"data={args.data}: {type(run.model).__name__} is conditional on the "
                        "run's own classes, so it cannot score another data set")

    bs = int(args.batch_size)
    max_batch = (int(args.max_batch) if args.max_batch is not None
                 else default_max_batch(run.device))
    x1, y1 = next(iter(run.data.eval_batches(val.part(0, 1), 1)))
    asked = {f"batch_size={bs}": (bs, "examples")}
    if statistic == "nll":
        asked[f"max_batch={max_batch}"] = (max_batch, "(example, sample) pairs")
    check_memory(bytes_per_pair(run.model, x1, y1), asked, run.device)

    start = time.perf_counter()
    total = len(val) + len(scored) + (len(other) if other is not None else 0)
    parts = {}
    with tqdm(total=total, desc=f"score {statistic}", unit="ex", leave=False,
              disable=None if args.progress else True) as bar, fast_linears(run.model):
        for key, dm, split in (("val", run.data, val), (args.split, run.data, scored),
                               ("other", other_dm if other is not None else None, other)):
            if split is None:
                continue
            torch.manual_seed(int(args.seed))
            parts[key] = score_split(run.model, dm.eval_batches(split, bs), statistic, k,
                                     max_batch, bar)

    val_scores, val_labels = parts["val"]
    dropped = 0
    if anomalies is not None:      # the threshold is set on normal data
        normal = ~np.isin(val_labels, anomalies)
        dropped = int((~normal).sum())
        val_scores = val_scores[normal]
        if len(val_scores) < 2:
            raise UserError(f"anomalies={anomalies}: the validation split holds "
                            f"{len(val_scores)} normal example(s); the threshold needs more")
    threshold = threshold_at(val_scores, fpr)
    fpr_val = float(np.mean(val_scores > threshold))

    s_scores, s_labels = parts[args.split]
    source = np.zeros(len(s_scores), np.int64)
    index = np.arange(len(s_scores))
    is_anomaly = (np.isin(s_labels, anomalies) if anomalies is not None
                  else np.zeros(len(s_scores), bool))
    if other is not None:
        o_scores, o_labels = parts["other"]
        s_scores = np.concatenate((s_scores, o_scores))
        s_labels = np.concatenate((s_labels, o_labels))
        source = np.concatenate((source, np.ones(len(o_scores), np.int64)))
        index = np.concatenate((index, np.arange(len(o_scores))))
        is_anomaly = np.concatenate((is_anomaly, np.ones(len(o_scores), bool)))
    flags = s_scores > threshold
    scored_name = f"{run.cfg.dataset.get('name', 'run')} {args.split}" + (
        f" + {args.data} test" if other is not None else "")
    result = {"statistic": statistic, "k": k if statistic == "nll" else None,
              "scored": scored_name, "threshold": threshold, "fpr": fpr, "fpr_val": fpr_val,
              "counts": {"val": int(len(val_scores)), "val_anomalies_dropped": dropped,
                         "scored": int(len(s_scores)), "flagged": int(flags.sum())},
              "score_mean": float(s_scores.mean()), "val_score_mean": float(val_scores.mean()),
              "checkpoint": str(args.checkpoint), "epoch": run.epoch, "seed": int(args.seed),
              "n": args.n}
    files = {"summary": str(out / f"{name}.json"), "scores": str(out / f"{name}_scores.csv")}
    png = None
    if anomalies is not None or other is not None:
        labels01 = is_anomaly.astype(np.int64)
        pos, neg = _check_two_kinds(labels01)
        a = auroc(s_scores, labels01)
        ap = average_precision(s_scores, labels01)
        tpr = float(flags[is_anomaly].mean())
        fpr_test = float(flags[~is_anomaly].mean())
        source_text = " + ".join(
            ([f"labels {anomalies}"] if anomalies is not None else [])
            + ([f"data={args.data}"] if other is not None else []))
        result.update(auroc=a, auprc=ap, auprc_chance=pos / (pos + neg), tpr=tpr,
                      fpr_test=fpr_test,
                      precision=float(is_anomaly[flags].mean()) if flags.any() else 0.0,
                      anomalies=anomalies, data=args.data, anomaly_source=source_text)
        result["counts"].update(anomalies=pos, normal=neg,
                                flagged_anomalies=int(flags[is_anomaly].sum()))
        if args.plot:
            rf, rt, _ = roc_curve(s_scores, labels01)
            png = roc_png(rf, rt, (fpr_test, tpr),
                          f"{statistic}: {source_text} vs normal; AUROC {a:.3f}")
            files["roc"] = str(out / f"{name}_roc.png")
    result["seconds"] = time.perf_counter() - start
    result["files"] = files
    columns = {"index": index, "source": np.where(source == 0, args.split, "other"),
               "label": s_labels, "anomaly": is_anomaly.astype(np.int64), "score": s_scores,
               "flag": flags.astype(np.int64)}
    write_bytes(out / f"{name}_scores.csv", csv_text(columns).encode())
    if png is not None:
        write_bytes(out / f"{name}_roc.png", png)
    write_json(out / f"{name}.json", result)
    if "auroc" in result:
        tb = TBLogger(run.run_dir)
        tb.scalars(f"score_{name}", {"auroc": result["auroc"], "auprc": result["auprc"],
                                     "tpr": result["tpr"]}, run.step)
        tb.close()
    print_table(result)
    print(f"wrote {out / name}.json, {name}_scores.csv" + (f", {name}_roc.png" if png else ""),
          file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
