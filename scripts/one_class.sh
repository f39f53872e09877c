#!/usr/bin/env bash
# The one-class protocol on Fashion-MNIST (docs/score.md): for each class c, train the MLP VAE on
# the other nine (dataset.exclude_classes=[c]) and score the whole test split with c as the
# anomaly, by each statistic. One run after another (a shared machine: nice -n 10).
#
#   scripts/one_class.sh [OUT] [EPOCHS] [STATISTICS] [extra training overrides ...]
#   scripts/one_class.sh outputs/score/one_class 3 "neg_elbo recon_error" dataset.train_size=20000
#
# OUT defaults to outputs/one_class, EPOCHS to 10, STATISTICS to "neg_elbo recon_error".
# A class whose run already has checkpoints/best.pt is not trained again. TRAIN_ONLY=1 trains
# and does not score; SCORE_ARGS adds options to every score command (e.g. "k=100").
set -euo pipefail
OUT=${1:-outputs/one_class}
EPOCHS=${2:-10}
STATISTICS=${3:-"neg_elbo recon_error"}
shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$OUT"
for c in 0 1 2 3 4 5 6 7 8 9; do
  run="$OUT/class$c"
  if [ ! -f "$run/checkpoints/best.pt" ]; then
    nice -n 10 python -m vae_train dataset=fashion_mnist "dataset.exclude_classes=[$c]" \
      trainer.epochs="$EPOCHS" trainer.progress=false device=cpu "$@" hydra.run.dir="$run"
  fi
  if [ "${TRAIN_ONLY:-0}" = 1 ]; then continue; fi
  for s in $STATISTICS; do
    # shellcheck disable=SC2086
    nice -n 10 python -m vae_train.score run="$run" statistic="$s" "anomalies=[$c]" \
      progress=false device=cpu ${SCORE_ARGS:-}
  done
done
