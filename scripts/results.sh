#!/usr/bin/env bash
# Reproduces the README's "Results" table: VAE vs IWAE vs a two-layer hierarchical VAE on
# dynamically binarized Fashion-MNIST, equal epochs, then the k=5000 importance-sampled NLL.
#   bash scripts/results.sh [epochs=20] [k=5000]
# Runs go to outputs/results/<name>; each writes metrics.json and eval.json.
set -euo pipefail
epochs=${1:-20}
k=${2:-5000}
common=(dataset=fashion_mnist dataset.binarize=dynamic "trainer.epochs=$epochs" trainer.progress=false)
declare -A runs=(
  [vae_elbo]="model=vae loss=elbo"
  [vae_iwae5]="model=vae loss=iwae loss.k=5"
  [hvae_elbo]="model=hvae loss=elbo"
  [hvae_iwae5]="model=hvae loss=iwae loss.k=5"
)
for name in vae_elbo vae_iwae5 hvae_elbo hvae_iwae5; do
  # shellcheck disable=SC2086
  python -m vae_train "${common[@]}" ${runs[$name]} "hydra.run.dir=outputs/results/$name"
done
for name in vae_elbo vae_iwae5 hvae_elbo hvae_iwae5; do
  python -m vae_train.evaluate "run=outputs/results/$name" "k=$k" progress=false
done
python - <<'PY'
import json, pathlib
print(f"{'run':12} {'epochs':>6} {'train s':>8} {'test -ELBO':>10} {'NLL':>8} {'k':>5} {'active':>10}")
for name in ["vae_elbo", "vae_iwae5", "hvae_elbo", "hvae_iwae5"]:
    d = pathlib.Path("outputs/results") / name
    m, e = json.loads((d / "metrics.json").read_text()), json.loads((d / "eval.json").read_text())
    au = "+".join(map(str, e["active_units_per_layer"]))
    print(f"{name:12} {m['epoch']:6d} {m['train_seconds']:8.0f} {-e['elbo']:10.2f} {e['nll']:8.2f} "
          f"{e['k']:5d} {au:>10}")
PY
