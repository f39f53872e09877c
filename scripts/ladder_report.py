"""The table and the picture of ``scripts/ladder.sh``: for every run under OUT with an
``eval.json``, its test -ELBO, NLL, KL per layer, informative and active units (markdown, on
stdout), and ``OUT/ladder_curves.png``: validation -ELBO per epoch of each run, and the KL of each
layer per epoch.

    python scripts/ladder_report.py outputs/ladder
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def layers_of(e: dict) -> list[list[float]]:
    """The mean KL of each dimension, split by layer (bottom first)."""
    dims, per_dim = e["latent_dims_per_layer"], e["kl_per_dim"]
    out, a = [], 0
    for d in dims:
        out.append(per_dim[a:a + d])
        a += d
    return out


def table(out: Path) -> str:
    rows = ["| run | epochs | train s | test -ELBO | NLL (k) | KL per layer, 1..L (nats) "
            "| units above 0.01 nats | active units |", "|---|---:|---:|---:|---:|---|---|---|"]
    for run in sorted(p for p in out.iterdir() if (p / "eval.json").exists()):
        m = json.loads((run / "metrics.json").read_text())
        e = json.loads((run / "eval.json").read_text())
        layers = layers_of(e)
        kls = " + ".join(f"{sum(v):.1f}" for v in layers)
        units = " + ".join(f"{sum(x > 0.01 for x in v)}/{len(v)}" for v in layers)
        au = " + ".join(f"{a}/{n}" for a, n in zip(e["active_units_per_layer"],
                                                   e["latent_dims_per_layer"]))
        rows.append(f"| {run.name} | {m.get('epoch')} | {m['train_seconds']:.0f} | "
                    f"{-e['elbo']:.2f} | {e['nll']:.2f} ({e['k']}) | {kls} | {units} | {au} |")
    return "\n".join(rows)


def curves(out: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(p for p in out.iterdir() if (p / "metrics.json").exists()
                  and "_e" not in p.name)
    if not runs:
        return None
    fig, (ax, kx) = plt.subplots(1, 2, figsize=(11, 4))
    styles = ["-", "--", ":", "-.", (0, (1, 3)), (0, (5, 1))]
    for i, run in enumerate(runs):
        hist = json.loads((run / "metrics.json").read_text())["history"]
        epochs = [h["epoch"] for h in hist]
        colour = f"C{i}"                    # one colour per run, one line style per layer
        ax.plot(epochs, [h["val_loss"] for h in hist], label=run.name, color=colour)
        layer = 1
        while f"val_kl_{layer}" in hist[0]:
            kx.plot(epochs, [h[f"val_kl_{layer}"] for h in hist], color=colour,
                    linestyle=styles[(layer - 1) % len(styles)], label=f"{run.name} z{layer}")
            layer += 1
    low = min(min(line.get_ydata()) for line in ax.get_lines())
    ax.set_ylim(low - 1, low + 20)
    ax.set(xlabel="epoch", ylabel="validation -ELBO (nats)", title="validation -ELBO")
    kx.set(xlabel="epoch", ylabel="KL (nats)", title="KL of each layer (validation)")
    ax.grid(alpha=0.3)
    kx.grid(alpha=0.3)
    ax.legend()
    kx.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out / "ladder_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    out = Path((argv or sys.argv[1:] or ["outputs/ladder"])[0])
    print(table(out))
    path = curves(out)
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
