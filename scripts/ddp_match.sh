#!/usr/bin/env bash
# One process against two (torchrun + DDP, gloo): the same model, settings and seed trained both ways on a
# prepared dataset, and their test metrics side by side (scripts/paired.py).
# Usage: scripts/ddp_match.sh DATASET OUT [mahn train flags ...]   e.g. runs/real/office runs/ddp --model sasrec
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 out=$2; shift 2
M=.venv/bin/mahn
mkdir -p "$out"
for n in 1 2; do
  [ -f "$out/nproc$n/summary.json" ] && continue
  resume=(); [ -f "$out/nproc$n/checkpoints/last.safetensors" ] && resume=(--resume)
  start=$(date +%s)
  $M train "$data" --out "$out/nproc$n" --nproc $n --threads 1 --no-progress "${resume[@]}" "$@" > "$out/nproc$n.log" 2>&1
  echo "nproc $n: $(( $(date +%s) - start )) s; $(tail -n 1 "$out/nproc$n.log")"
done
.venv/bin/python scripts/paired.py "$out/nproc1" "$out/nproc2"
