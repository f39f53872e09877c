"""``python -m vae_train.report <sweep dir> [x=loss.beta] [lines=model.latent_dim] [out=DIR]``
(a Hydra app: options and defaults in ``configs/commands/report.yaml``; ``--help`` lists
them).

Turns a sweep directory into a result. Every run under it (a folder with ``.hydra/``) is read:
its overrides (the swept values), ``metrics.json``, ``eval.json`` where ``evaluate`` was run, or
``failed.json`` for a job that failed. Written into the sweep directory (or ``out=``):

* ``report.csv``   one row per run: status, the swept values, every metric (``eval_*`` from
                   ``eval.json``), the error of a failed run;
* ``report.md``    the same as a table, the failed and unfinished runs with their reasons, and
                   the plots;
* ``metrics.png``  each metric against the x key (``loss.beta`` when it was swept), one line per
                   value of the other swept keys (for a beta x latent-size sweep: per latent size);
* ``rate_distortion.png``  every run as a point in the plane of KL (rate, nats) against
                   reconstruction loss (distortion, nats), labelled with its swept values.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from vae_train.errors import UserError
from vae_train.runs import hydra_app

USAGE = ("usage: python -m vae_train.report <sweep dir> [x=KEY] [lines=KEY] [out=DIR] "
         "(--help explains them)")

# Metrics plotted (when present), in this order.
PLOTTED = ["test_loss", "test_recon", "test_kl", "eval_nll", "eval_active_units", "eval_mig",
           "eval_factorvae_metric", "test_error", "test_perplexity", "test_disc_acc"]
NOT_METRICS = {"history", "device", "precision"}


def _number(text: str):
    """'4' -> 4, '0.5' -> 0.5, 'vae' -> 'vae'."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect(sweep: Path) -> list[dict]:
    """One record per run folder: name, status, overrides, metrics, error."""
    runs = []
    for hydra_dir in sorted(sweep.rglob(".hydra")):
        run_dir = hydra_dir.parent
        if run_dir == sweep:
            continue
        overrides = {}
        ov_file = hydra_dir / "overrides.yaml"
        if ov_file.is_file():
            for item in OmegaConf.to_container(OmegaConf.load(ov_file)):
                key, _, value = str(item).partition("=")
                overrides[key.lstrip("+~")] = _number(value)
        rec = {"run": str(run_dir.relative_to(sweep)), "overrides": overrides, "metrics": {},
               "status": "unfinished", "error": ""}
        metrics = _read_json(run_dir / "metrics.json")
        failed = _read_json(run_dir / "failed.json")
        if metrics is not None and metrics.get("status") == "failed":   # stopped on NaN/Inf
            rec["status"], rec["error"] = "failed", str(metrics.get("error", "")).splitlines()[0]
        elif metrics is not None:
            rec["status"] = "ok"
            rec["metrics"].update({k: v for k, v in metrics.items()
                                   if k not in NOT_METRICS and _is_scalar(v)})
            ev = _read_json(run_dir / "eval.json") or {}
            rec["metrics"].update({f"eval_{k}": v for k, v in ev.items() if _is_scalar(v)
                                   and k not in ("n", "seconds", "epoch", "k")})
        elif failed is not None:
            rec["status"], rec["error"] = "failed", str(failed.get("error", "")).splitlines()[0]
        else:
            rec["error"] = "no metrics.json and no failed.json (still running, or killed)"
        runs.append(rec)
    return runs


def _is_scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def swept_keys(runs: list[dict]) -> list[str]:
    """Keys whose value differs between runs, in command-line order."""
    values: dict[str, set] = defaultdict(set)
    order: list[str] = []
    for r in runs:
        for k, v in r["overrides"].items():
            if k.startswith("hydra") or k in ("dataset.root", "resume"):
                continue
            values[k].add(str(v))
            if k not in order:
                order.append(k)
    return [k for k in order if len(values[k]) > 1 or any(k not in r["overrides"] for r in runs)]


def _sort_key(run: dict, keys: list[str]):
    return [(0, v, "") if isinstance(v := run["overrides"].get(k), (int, float)) else (1, 0, str(v))
            for k in keys]


def write_csv(runs, keys, metric_names, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "status", *keys, *metric_names, "error"])
        for r in runs:
            w.writerow([r["run"], r["status"], *(r["overrides"].get(k, "") for k in keys),
                        *(r["metrics"].get(m, "") for m in metric_names), r["error"]])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def write_markdown(sweep, runs, keys, metric_names, plots, path: Path) -> None:
    ok = [r for r in runs if r["status"] == "ok"]
    bad = [r for r in runs if r["status"] != "ok"]
    shown = [m for m in PLOTTED if any(m in r["metrics"] for r in ok)]
    shown += [m for m in ("best_epoch", "train_seconds") if m in metric_names]
    lines = [f"# Sweep report: {sweep}", "",
             f"{len(runs)} runs: {len(ok)} finished, "
             f"{sum(r['status'] == 'failed' for r in runs)} failed, "
             f"{sum(r['status'] == 'unfinished' for r in runs)} unfinished. Swept: "
             + (", ".join(f"`{k}`" for k in keys) or "nothing") + ". Losses in nats per example "
             "(test split, best checkpoint); `eval_*` from `python -m vae_train.evaluate`. Every "
             "metric of every run is in `report.csv`.", ""]
    header = ["run", *keys, *shown]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in ok:
        cells = [r["run"], *(_fmt(r["overrides"].get(k, "")) for k in keys),
                 *(_fmt(r["metrics"].get(m, "")) for m in shown)]
        lines.append("| " + " | ".join(cells) + " |")
    if bad:
        lines += ["", "## Runs without results", ""]
        lines += [f"- `{r['run']}` ({r['status']}): {r['error']}" for r in bad]
    for title, name in plots:
        lines += ["", f"## {title}", "", f"![{title}]({name})"]
    path.write_text("\n".join(lines) + "\n")


def _choose_axes(runs, keys, x, lines):
    if x is not None and x not in keys:
        raise UserError(f"x={x} was not swept; swept keys: {', '.join(keys) or 'none'}")
    if lines is not None and lines not in keys:
        raise UserError(f"lines={lines} was not swept; swept keys: {', '.join(keys) or 'none'}")
    numeric = [k for k in keys if all(isinstance(r["overrides"].get(k), (int, float))
                                      for r in runs)]
    if x is None:
        x = "loss.beta" if "loss.beta" in numeric else (numeric or keys or [None])[0]
    group = [lines] if lines else [k for k in keys if k != x]
    return x, group


def plot(runs, keys, x_key, group_keys, out: Path) -> list[tuple[str, str]]:
    """metrics.png and rate_distortion.png; returns (title, file name) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return []
    made = []
    numeric_x = x_key is not None and all(isinstance(r["overrides"].get(x_key), (int, float))
                                          for r in ok)
    groups: dict[str, list] = defaultdict(list)
    for r in ok:
        label = ", ".join(f"{k}={r['overrides'].get(k, '-')}" for k in group_keys) or "all runs"
        groups[label].append(r)
    xs_all = sorted({r["overrides"].get(x_key) for r in ok}, key=lambda v: (str(type(v)), v))
    log_x = numeric_x and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8

    metrics = [m for m in PLOTTED if any(m in r["metrics"] for r in ok)]
    if metrics and x_key is not None:
        cols = min(3, len(metrics))
        rows = math.ceil(len(metrics) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
        for ax, m in zip(axes.flat, metrics):
            for label, rs in sorted(groups.items(), key=lambda kv: _sort_key(kv[1][0], group_keys)):
                pts = sorted(((r["overrides"].get(x_key), r["metrics"][m]) for r in rs
                              if m in r["metrics"]), key=lambda p: (str(type(p[0])), p[0]))
                if not pts:
                    continue
                px = [p[0] if numeric_x else xs_all.index(p[0]) for p in pts]
                ax.plot(px, [p[1] for p in pts], marker="o", label=label)
            ax.set_title(m)
            ax.set_xlabel(x_key)
            if log_x:
                ax.set_xscale("log")
                ax.set_xticks(xs_all, [str(v) for v in xs_all])
                ax.minorticks_off()
            elif not numeric_x:
                ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all])
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(metrics):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if len(labels) > 1 or group_keys:
            fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)),
                       bbox_to_anchor=(0.5, 0), fontsize="small")
        fig.suptitle(f"metrics against {x_key}" + (f", one line per {', '.join(group_keys)}"
                                                   if group_keys else ""))
        fig.tight_layout(rect=(0, 0.06 if group_keys else 0, 1, 0.96))
        fig.savefig(out / "metrics.png", dpi=110)
        plt.close(fig)
        made.append((f"Metrics against {x_key}", "metrics.png"))

    rd = [r for r in ok if "test_kl" in r["metrics"] and "test_recon" in r["metrics"]]
    if rd:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        for label, rs in sorted(groups.items(), key=lambda kv: _sort_key(kv[1][0], group_keys)):
            rs = [r for r in rs if r in rd]
            if not rs:
                continue
            rs.sort(key=lambda r: _sort_key(r, [x_key] if x_key else []))
            line, = ax.plot([r["metrics"]["test_kl"] for r in rs],
                            [r["metrics"]["test_recon"] for r in rs], marker="o", label=label)
            for r in rs:
                if x_key is not None:
                    ax.annotate(f"{x_key.rsplit('.', 1)[-1]}={r['overrides'].get(x_key)}",
                                (r["metrics"]["test_kl"], r["metrics"]["test_recon"]),
                                textcoords="offset points", xytext=(4, 4), fontsize=7,
                                color=line.get_color())
        ax.set_xlabel("rate: KL(q(z|x) || p(z)), nats per example")
        ax.set_ylabel("distortion: -log p(x|z), nats per example")
        ax.set_title("rate-distortion plane (test split)")
        ax.grid(alpha=0.3)
        if len(groups) > 1:
            ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(out / "rate_distortion.png", dpi=110)
        plt.close(fig)
        made.append(("Rate-distortion plane", "rate_distortion.png"))
    return made


def report(sweep: Path, x=None, lines=None, out: Path | None = None) -> dict:
    if not sweep.is_dir():
        raise UserError(f"{sweep}: no such directory; give a sweep directory "
                        "(outputs/multirun/<date>/<time>)")
    runs = collect(sweep)
    if not runs:
        raise UserError(f"{sweep}: no runs found (no sub-folder with .hydra/); give a sweep "
                        "directory (outputs/multirun/<date>/<time>)")
    keys = swept_keys(runs)
    runs.sort(key=lambda r: _sort_key(r, keys))
    metric_names = sorted({m for r in runs for m in r["metrics"]},
                          key=lambda m: (m.startswith("eval_"), not m.startswith("test_"), m))
    out = out or sweep
    out.mkdir(parents=True, exist_ok=True)
    x_key, group_keys = _choose_axes(runs, keys, x, lines)
    plots = plot(runs, keys, x_key, group_keys, out)
    write_csv(runs, keys, metric_names, out / "report.csv")
    write_markdown(sweep, runs, keys, metric_names, plots, out / "report.md")
    return {"runs": runs, "keys": keys, "files": [out / "report.md", out / "report.csv",
                                                  *(out / name for _, name in plots)]}


@hydra_app("report", USAGE, path_keys=("sweep", "out"), positional="sweep")
def main(args):
    result = report(Path(str(args.sweep)).expanduser(), args.x, args.lines,
                    Path(args.out) if args.out else None)
    runs = result["runs"]
    ok = sum(r["status"] == "ok" for r in runs)
    print(f"{len(runs)} runs ({ok} finished); swept: {', '.join(result['keys']) or 'nothing'}",
          file=sys.stderr)
    for r in runs:
        if r["status"] != "ok":
            print(f"  {r['status']}: {r['run']}: {r['error']}", file=sys.stderr)
    for f in result["files"]:
        print(f"wrote {f}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
