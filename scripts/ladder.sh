#!/usr/bin/env bash
# Reproduces docs/results.md's "Deep hierarchies" table: the top-down ladder VAE with L = 1, 2, 4
# stochastic layers on dynamically binarized Fashion-MNIST, each trained for the first number of
# epochs, copied (<out>/L<l>_e<first>), then resumed to the second number; then the test NLL of
# both with k importance samples (evaluate).
#   bash scripts/ladder.sh [layers="1 2 4"] [epochs="20 100"] [k=1000] [out=outputs/ladder]
# A run whose copy or metrics.json already exists is not trained again.
set -euo pipefail
layers=${1:-1 2 4}
read -r first second <<<"${2:-20 100}"
k=${3:-1000}
out=${4:-outputs/ladder}
common=(model=ladder dataset=fashion_mnist dataset.binarize=dynamic trainer.progress=false)
for l in $layers; do
  run="$out/L$l"
  if [ ! -d "$out/L${l}_e$first" ]; then
    python -m vae_train "${common[@]}" "model.layers=$l" "trainer.epochs=$first" \
      "hydra.run.dir=$run" overwrite=true
    cp -r "$run" "$out/L${l}_e$first"
  fi
  if [ -n "$second" ] && [ "$(python -c "import json,sys;print(json.load(open(sys.argv[1]))['epoch'])" "$run/metrics.json" 2>/dev/null || echo 0)" != "$second" ]; then
    python -m vae_train "resume=$run" "trainer.epochs=$second"
  fi
  for r in "$out/L${l}_e$first" ${second:+"$run"}; do
    [ -f "$r/eval.json" ] || python -m vae_train.evaluate "run=$r" "k=$k" progress=false
  done
done
python "$(dirname "$0")/ladder_report.py" "$out"   # the table, and <out>/ladder_curves.png
