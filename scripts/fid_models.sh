#!/usr/bin/env bash
# Sample quality (FID/KID with the own feature network) of vae, conv_vae and vqvae on
# Fashion-MNIST: the runs and evaluations behind the table in docs/evaluate.md.
#   scripts/fid_models.sh [out folder, default outputs/fid] [epochs, default 3]
#                         [training images, default 12000; all: null] [train|eval|all]
# Fashion-MNIST is found in Debian's /usr/share/datasets/fashion-mnist (or see docs/data.md).
set -euo pipefail
# One thread per process: on a shared, busy 2-core machine two OpenMP threads per process ran
# conv_vae 5-10x slower and KID's many small kernel matrices 100x slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${1:-outputs/fid}
EPOCHS=${2:-3}
TRAIN=${3:-12000}
WHAT=${4:-all}

COMMON=(dataset=fashion_mnist dataset.download=false dataset.train_size="$TRAIN" device=cpu
        trainer.epochs="$EPOCHS" trainer.progress=false seed=0)
mkdir -p "$OUT"
if [[ $WHAT != eval ]]; then
  nice -n 10 python -m vae_train model=vae "${COMMON[@]}" hydra.run.dir="$OUT/vae"
  nice -n 10 python -m vae_train model=conv_vae "${COMMON[@]}" hydra.run.dir="$OUT/conv_vae"
  nice -n 10 python -m vae_train model=vqvae model.prior_epochs="$EPOCHS" "${COMMON[@]}" \
    hydra.run.dir="$OUT/vqvae"
fi
if [[ $WHAT != train ]]; then
  # The first evaluation trains the feature network (fid_features.pt); the others get a copy,
  # so that all three are scored in one feature space (same data and seed: evaluate reuses it).
  for m in vae conv_vae vqvae; do
    if [[ $m != vae && -f $OUT/vae/fid_features.pt ]]; then
      cp "$OUT/vae/fid_features.pt" "$OUT/$m/fid_features.pt"
    fi
    nice -n 10 python -m vae_train.evaluate run="$OUT/$m" k=50 n=500 fid=true \
      fid_features=own fid_n=10000 progress=false
  done
fi
