#!/usr/bin/env bash
# Lazy Adam (`--set optimizer=lazy-adam`) against Adam on real data, with the sampled softmax (the loss of
# benchmarks/scale.py, where lazy Adam stops an epoch growing with items x steps): MAHN-V-T and SASRec, each
# trained with both optimisers to early stopping, then evaluated on the test split.
#   scripts/lazy_adam.sh DATASET...          # runs/real/DATASET (scripts/real_data.sh) -> runs/lazy/DATASET
#   python scripts/probe_table.py runs/lazy/DATASET
# A finished run is skipped, a cut one resumes (scripts/probe.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
for dataset in "$@"; do
  for optimizer in adam lazy-adam; do
    scripts/probe.sh "runs/real/$dataset" "runs/lazy/$dataset" "mahn-vt-$optimizer" --model mahn --ablate vt \
      --set loss=sampled-ce --set optimizer="$optimizer"
    scripts/probe.sh "runs/real/$dataset" "runs/lazy/$dataset" "sasrec-$optimizer" --model sasrec \
      --set loss=sampled-ce --set optimizer="$optimizer"
  done
done
