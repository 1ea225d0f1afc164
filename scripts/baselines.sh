#!/usr/bin/env bash
# The ID-only baselines of docs/baselines.md on Amazon 2014 Phones and Clothing, under the paper's
# uni100 protocol, with the test metrics of each run written to RUNS/NAME.test.json.
#
# Usage: scripts/baselines.sh DATA RUNS [EPOCHS] [LIMIT_S]
#   DATA     folder holding the prepared `phones` and `clothing` datasets (see docs/baselines.md)
#   RUNS     folder for the run directories (a run already finished is skipped; a cut one resumes)
#   EPOCHS   most epochs per run (default 200; early stopping on validation usually ends sooner)
#   LIMIT_S  wall-clock limit per run in seconds (default 0: none); a cut run keeps its best epoch
#
# Every run takes the papers' configurations (`--preset paper`: their losses, the step schedule); the flags
# below override it. All runs start at once, which suits one GPU (each run is small); on a CPU set JOBS=1 to run them
# one after another. MAHN=... picks the command (default: mahn on the PATH).
set -uo pipefail
DATA=$1
RUNS=$2
EPOCHS=${3:-200}
LIMIT=${4:-0}
JOBS=${JOBS:-0}
MAHN=${MAHN:-mahn}
mkdir -p "$RUNS"

train() {  # NAME DATASET ARGS...
  local name=$1 dataset=$2 run="$RUNS/$1"
  shift 2
  if [ ! -f "$run/summary.json" ]; then
    local resume=()
    [ -f "$run/checkpoints/last.safetensors" ] && resume=(--resume)
    timeout "$LIMIT" $MAHN train "$DATA/$dataset" --out "$run" --preset paper "$@" --epochs "$EPOCHS" --patience 10 \
        --select uni100 --seed 0 --threads 1 --no-progress "${resume[@]}" >"$run.log" 2>&1
    echo "$name: train exit $? after $SECONDS s" >>"$run.log"
  fi
  $MAHN evaluate "$run" --data "$DATA/$dataset" --json >"$run.test.json" 2>>"$run.log"
}

launch() {
  if [ "$JOBS" = 1 ]; then train "$@"; else train "$@" & fi
}

for dataset in phones clothing; do
  launch "$dataset-popularity" "$dataset" --model popularity
  launch "$dataset-gru4rec" "$dataset" --model gru4rec
  launch "$dataset-caser" "$dataset" --model caser
  launch "$dataset-caser-l2-1e-6" "$dataset" --model caser --weight-decay 1e-6
  launch "$dataset-sasrec" "$dataset" --model sasrec
  launch "$dataset-sasrec-dropout-0.5" "$dataset" --model sasrec --set dropout=0.5
  launch "$dataset-bert4rec" "$dataset" --model bert4rec
done
wait
