#!/usr/bin/env bash
# One probe of docs/investigations/rare-items.md: train a run (or resume it) and write its test metrics.
# Usage: scripts/probe.sh DATASET OUT NAME [mahn train flags ...]
#   writes OUT/NAME/ (the run) and OUT/NAME.test.json; a finished probe is skipped, a cut one resumes.
# Then: python scripts/deciles.py OUT   (per-decile table and plot)
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 out=$2 name=$3; shift 3
M=.venv/bin/mahn
run="$out/$name"
mkdir -p "$out"
if [ ! -f "$run/summary.json" ]; then
  resume=(); [ -f "$run/checkpoints/last.safetensors" ] && resume=(--resume)
  $M train "$data" --out "$run" --no-progress --threads "${THREADS:-1}" "${resume[@]}" "$@" > "$out/$name.log" 2>&1
fi
if [ ! -s "$out/$name.test.json" ]; then  # written whole or not at all
  $M evaluate "$run" --json --device cpu > "$out/.$name.test.json.tmp"
  mv "$out/.$name.test.json.tmp" "$out/$name.test.json"
fi
echo "$name done"
