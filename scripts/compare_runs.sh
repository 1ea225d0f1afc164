#!/usr/bin/env bash
# The runs behind the README's "MAHN with its new defaults" tables and docs/investigations/rare-items.md:
# MAHN (defaults: softmax loss) beside MAHN --preset paper and the ID-only transformers, on the data that
# scripts/real_data.sh prepares, plus the new-item split of Instruments. One seed; each run early-stops on
# validation full NDCG@10 (patience 10, at most 100 epochs); a run cut by a time limit resumes where it stopped.
# Usage: scripts/compare_runs.sh [WORK_DIR]   (default runs/real; results in runs/compare/DATASET/NAME.test.json)
# Then: python scripts/deciles.py runs/compare/instruments   (one row per run)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/real}
M=.venv/bin/mahn
probe() { scripts/probe.sh "$WORK/$1" "runs/compare/$1" "${@:2}"; }
[ -f "$WORK/instruments-cold/manifest.json" ] || $M cold-split "$WORK/instruments" --out "$WORK/instruments-cold"

for dataset in instruments hm; do
  probe $dataset mahn --epochs 100 --patience 10
  probe $dataset mahn-paper --preset paper --epochs 100 --patience 10
  probe $dataset bert4rec --model bert4rec --epochs 100 --patience 10
  probe $dataset sasrec --model sasrec --epochs 100 --patience 10
  probe $dataset sasrec-ce --model sasrec --set loss=ce --epochs 100 --patience 10
done
probe hm mahn-vt --ablate vt --epochs 100 --patience 10
probe hm mahn-vt-paper --ablate vt --preset paper --epochs 100 --patience 10
probe instruments-cold mahn --epochs 30 --patience 5
probe instruments-cold sasrec --model sasrec --epochs 30 --patience 5
probe instruments-cold popularity --model popularity
