#!/usr/bin/env bash
# Reproduces the "Results" table of docs/results.md on dynamically binarized Fashion-MNIST: a one-layer VAE
# (the classic 784-400-20 network and the IWAE paper's 200-200-50 tanh network) trained with the
# ELBO and with the k=5 IWAE bound, against the two-layer hierarchical VAE trained both ways, at
# equal epochs; then the importance-sampled test NLL of each.
#   bash scripts/results.sh [epochs=20] [k=1000]
# Runs go to outputs/results/<name>, each with metrics.json and eval.json. A run whose
# metrics.json already exists is not trained again, one that was stopped is resumed (delete
# outputs/results to start over).
set -euo pipefail
epochs=${1:-20}
k=${2:-1000}
common=(dataset=fashion_mnist dataset.binarize=dynamic "trainer.epochs=$epochs" trainer.progress=false)
paper=(model=vae "model.hidden_dims=[200,200]" model.latent_dim=50 model.activation=tanh)
names=(vae_elbo vae_iwae5 paper_elbo paper_iwae5 hvae_elbo hvae_iwae5)
declare -A args=(
  [vae_elbo]="model=vae loss=elbo"
  [vae_iwae5]="model=vae loss=iwae loss.k=5"
  [paper_elbo]="${paper[*]} loss=elbo"
  [paper_iwae5]="${paper[*]} loss=iwae loss.k=5"
  [hvae_elbo]="model=hvae loss=elbo"
  [hvae_iwae5]="model=hvae loss=iwae loss.k=5"
)
for name in "${names[@]}"; do
  [ -f "outputs/results/$name/metrics.json" ] && continue
  if [ -f "outputs/results/$name/checkpoints/last.pt" ]; then   # stopped: continue it
    python -m vae_train "resume=outputs/results/$name"
    continue
  fi
  # shellcheck disable=SC2086
  python -m vae_train "${common[@]}" ${args[$name]} "hydra.run.dir=outputs/results/$name"
done
for name in "${names[@]}"; do
  python -m vae_train.evaluate "run=outputs/results/$name" "k=$k" progress=false
done
python - "${names[@]}" <<'PY'
import json, pathlib, sys
print(f"| run | train s | test -ELBO | NLL (k) | active units | eval s |")
for name in sys.argv[1:]:
    d = pathlib.Path("outputs/results") / name
    m, e = json.loads((d / "metrics.json").read_text()), json.loads((d / "eval.json").read_text())
    au = " + ".join(f"{a}/{n}" for a, n in zip(e["active_units_per_layer"], e["latent_dims_per_layer"]))
    print(f"| {name} | {m['train_seconds']:.0f} | {-e['elbo']:.2f} | {e['nll']:.2f} ({e['k']}) | {au} | {e['seconds']:.0f} |")
PY
