#!/usr/bin/env bash
# Seconds per training step of `experiment=quickstart` for each (torch threads, DataLoader workers, precision)
# setting: (T(250 steps) - T(50 steps)) / 200 of whole `luna.train` runs, start-up and k-means init cancelled out.
#   bash benchmarks/quickstart_threads.sh            # on an otherwise idle machine: the figures are wall times
#   CONFIGS="2,0,fp32 2,0,bf16" bash benchmarks/quickstart_threads.sh   # some of the settings
# 2026-12-01, 2-core VM: threads=2 workers=0 0.152 s/step; threads=2 workers=1 0.160; threads=1 workers=1 0.222
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for cfg in ${CONFIGS:-2,0,fp32 2,0,bf16 2,1,fp32 1,1,fp32}; do
  IFS=, read -r -a c <<< "$cfg"
  set -- "${c[@]}"
  declare -A t
  for n in 50 250; do
    s=$(date +%s.%N)
    "$PY" -m luna.train experiment=quickstart hardware.threads="$1" data.num_workers="$2" hardware.precision="$3" trainer.max_steps=$n \
      trainer.max_minutes=0 trainer.val_every_steps=100000 logger=none trainer.progress=false \
      hydra.run.dir="$out/t$1w$2$3n$n" > /dev/null 2>&1
    t[$n]=$(echo "$(date +%s.%N) - $s" | bc)
  done
  echo "threads=$1 workers=$2 precision=$3: $(echo "scale=4; (${t[250]} - ${t[50]}) / 200" | bc) s/step"
done
