#!/usr/bin/env bash
# Seeds 1 and 2 of a before/after row of docs/investigations/defaults.md section 6, on both sides (the old
# defaults on the old code, as `scripts/defaults.sh before` runs them; today's); scripts/before_after.py then
# shows the row as the mean of seeds 0-2.
#   scripts/seeds.sh DATASET MODEL [mahn train flags...]   e.g. scripts/seeds.sh demo mahn; scripts/seeds.sh phones bert4rec
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/real}
dataset=$1 model=$2; shift 2
data=$WORK/$dataset; [ "$dataset" = demo ] && data=$WORK/demo/data
tree=runs/before-code
[ -d "$tree/src" ] || git worktree add --detach "$tree" e46aee7 >/dev/null
for seed in 1 2; do
  PYTHONPATH="$PWD/$tree/src" scripts/probe.sh "$data" "runs/before/$dataset" "$model-seed$seed" --model "$model" --seed "$seed" "$@"
  scripts/probe.sh "$data" "runs/after/$dataset" "$model-seed$seed" --model "$model" --seed "$seed" "$@"
done
