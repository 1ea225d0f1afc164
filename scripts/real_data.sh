#!/usr/bin/env bash
# Prepares the real data in ../shared/data under WORK_DIR (Office with MiniLM title/description features, Phones
# and Clothing ID-only, Instruments with image/text code features, H&M with EfficientNet-Lite0 / MiniLM features),
# then trains MAHN vs MAHN-V-T on Instruments and H&M (README "Measured results").
# Usage: scripts/real_data.sh [WORK_DIR]   (default: runs/real). Test metrics go to WORK_DIR/*.test.json.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
WORK=${1:-runs/real}
M=.venv/bin/mahn
export HF_HUB_OFFLINE=1
mkdir -p "$WORK"

for amazon2014 in office phones clothing; do
  [ -f "$WORK/$amazon2014/manifest.json" ] || $M prepare "$DATA/amazon2014-$amazon2014/user_sequence.txt" \
      --format sequences $([ -f "$DATA/amazon2014-$amazon2014/items.jsonl" ] && echo --items "$DATA/amazon2014-$amazon2014/items.jsonl") \
      --kcore 5 --out "$WORK/$amazon2014"
done
$M features "$WORK/office" --no-progress

[ -f "$WORK/instruments/manifest.json" ] || $M prepare "$DATA/amazon2018-instruments/user_sequence.txt" \
    --format sequences --items "$DATA/amazon2018-instruments/items.jsonl" --kcore 5 --out "$WORK/instruments"
$M features "$WORK/instruments" --image codes --text codes --no-progress

[ -f "$WORK/hm/manifest.json" ] || $M prepare "$DATA/hm-sample/transactions.csv" --format csv \
    --items "$DATA/hm-sample/articles.csv" --user-col customer_id --item-col article_id --time-col t_dat \
    --title-col prod_name --text-col detail_desc --image-pattern 'images/{key:.3}/{key}.jpg' --out "$WORK/hm"
$M features "$WORK/hm" --no-progress

for dataset in instruments hm; do
  for ablate in none vt; do
    run="$WORK/$dataset-mahn-$ablate"
    flags=(); [ "$ablate" = none ] || flags=(--ablate "$ablate")
    if [ ! -f "$run/summary.json" ]; then
      resume=(); [ -f "$run/checkpoints/last.safetensors" ] && resume=(--resume)
      $M train "$WORK/$dataset" --out "$run" --model mahn "${flags[@]}" --epochs 40 --patience 5 --seed 0 \
          --no-progress "${resume[@]}"
    fi
    $M evaluate "$run" --json > "$run.test.json"
    $M evaluate "$run"
  done
done
