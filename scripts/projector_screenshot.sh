#!/usr/bin/env bash
# A picture of TensorBoard's Projector tab for a run that `python -m vae_train.encode` wrote
# an embedding into (docs/img/projector.png was made with this).
#   scripts/projector_screenshot.sh RUN_DIR OUT.png
# Needs chromium (apt-get install chromium); WebGL runs in software (SwiftShader).
set -euo pipefail
run="$1"; out="$2"; port="${PORT:-6123}"
tensorboard --logdir "$run" --port "$port" > /dev/null 2>&1 &
tb=$!
trap 'kill $tb' EXIT
for _ in $(seq 60); do curl -sf "localhost:$port/data/plugins_listing" > /dev/null && break; sleep 1; done
chromium --headless=new --no-sandbox --use-gl=angle --use-angle=swiftshader --ignore-gpu-blocklist \
  --enable-unsafe-swiftshader --hide-scrollbars --window-size=1500,950 --virtual-time-budget=60000 \
  --screenshot="$out" "http://localhost:$port/?darkMode=false#projector" 2> /dev/null
echo "wrote $out"
