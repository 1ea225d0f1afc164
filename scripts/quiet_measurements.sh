#!/usr/bin/env bash
# The measurements of issue 23 that need a quiet machine (no training lanes): run them first in a session,
# before starting long runs, one after the other. Each writes its benchmarks/results/*.json (and records the
# load average it saw); it refuses to start while a training job runs.
#   scripts/quiet_measurements.sh [serve|recbole|rectools|scale|scale30]...   (default: all five, in this order)
# Hours: serve about 1 (the first time builds the 24,000-item shop, 20 min), recbole 4 models x 30-50 min,
# rectools 2 x up to 2 x 30 min, scale (1M, 3M and 10M interactions) about 1/3, scale30 (30M) 1.25: a session
# of its own; each keeps the other's rows.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(serve recbole rectools scale scale30)
busy() {  # another mahn job would make every number here a loaded one
  if pgrep -f "mahn (train|reproduce)|tune_vs_grid" >/dev/null; then
    echo "training jobs are running (pgrep -af 'mahn train'): pause them (kill -STOP) first" >&2; exit 2
  fi
}
for step in "${steps[@]}"; do
  busy
  case $step in
    serve) $PY benchmarks/serve_load.py --client wrk --work runs/serve-load --catalogues shop clothing ;;  # apt-get install wrk
    recbole)
      $PY benchmarks/side_by_side.py --dataset runs/real/phones --models sasrec --budget-minutes 30 \
        --json benchmarks/results/recbole_phones.json
      $PY benchmarks/side_by_side.py --dataset runs/real/phones --models gru4rec --budget-minutes 30 \
        --json benchmarks/results/recbole_phones_gru4rec.json
      $PY benchmarks/side_by_side.py --dataset runs/real/phones --models bert4rec --budget-minutes 30 \
        --json benchmarks/results/recbole_phones_bert4rec.json
      $PY benchmarks/side_by_side.py --dataset runs/real/phones --models caser --budget-minutes 30 \
        --json benchmarks/results/recbole_phones_caser.json ;;
    rectools)
      for model in sasrec bert4rec; do
        $PY benchmarks/side_by_side.py --peer rectools --dataset runs/real/phones --models $model \
          --budget-minutes 30 --json benchmarks/results/rectools_phones_$model.json
      done ;;
    scale) $PY benchmarks/scale.py --sizes 1000000 3000000 10000000 ;;
    scale30) $PY benchmarks/scale.py --sizes 30000000 ;;
    *) echo "unknown step $step (serve, recbole, rectools, scale, scale30)" >&2; exit 2 ;;
  esac
done
