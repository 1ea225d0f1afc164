#!/usr/bin/env bash
# The runs behind docs/investigations/defaults.md. Every run is one `mahn train` (scripts/probe.sh: a finished run
# is skipped, a cut one resumes); each lane uses one thread, so two lanes fill two cores.
#   scripts/defaults.sh before DATASET...   # the old defaults: the same command at commit e46aee7 (a git worktree)
#   scripts/defaults.sh after DATASET...    # today's defaults, the same command (Office, Instruments and H&M:
#                                           # seed 0 of their reports stands in, scripts/before_after.py)
#   scripts/defaults.sh probes DATASET...   # the probes of sections 1-5 (office, hm, instruments-cold, hm-cold)
#   scripts/defaults.sh report DATASET [EXPERIMENTS]   # docs/reports/defaults/DATASET: 3 seeds, `standard` budget
#                                           # (SEEDS=1 first: seed 0 of every model, kept when 3 are asked for)
#   scripts/defaults.sh lane DATASET MODELS [EXPERIMENTS]   # beside a report: MODELS (e.g. bert4rec,gru4rec) on
#                                           # the second core (experiments: compare, or e.g. cold)
# Data: scripts/real_data.sh (runs/real/...); the demo's dataset: `mahn demo --out runs/real/demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/real}
M=.venv/bin/mahn
BEFORE_COMMIT=e46aee7
MODELS=mahn,mgt,sasrec,bert4rec,gru4rec,popularity

data() { case $1 in demo) echo "$WORK/demo/data" ;; *) echo "$WORK/$1" ;; esac; }
# MAHN on a dataset without images reads its text alone (MAHN-V), as `mahn reproduce` runs it
mahn_flags() { case $1 in office) echo "--ablate v" ;; phones|clothing) echo "--ablate vt" ;; esac; }
models_of() { case $1 in phones|clothing) echo "sasrec bert4rec" ;; *) echo "mahn mgt sasrec bert4rec gru4rec" ;; esac; }

before() {  # the old code in a worktree of its own, on PYTHONPATH ahead of the installed mahn
  local tree=runs/before-code
  [ -d "$tree/src" ] || git worktree add --detach "$tree" "$BEFORE_COMMIT" >/dev/null
  for dataset in "$@"; do
    for model in $(models_of "$dataset"); do
      flags=(--model "$model"); [ "$model" = mahn ] && flags+=($(mahn_flags "$dataset"))
      PYTHONPATH="$PWD/$tree/src" scripts/probe.sh "$(data "$dataset")" "runs/before/$dataset" "$model" "${flags[@]}"
    done
  done
}

after() {
  for dataset in "$@"; do
    for model in $(models_of "$dataset"); do
      flags=(--model "$model"); [ "$model" = mahn ] && flags+=($(mahn_flags "$dataset"))
      scripts/probe.sh "$(data "$dataset")" "runs/after/$dataset" "$model" "${flags[@]}"
    done
  done
}

probe() { scripts/probe.sh "$(data "$1")" "runs/defaults/$1" "${@:2}"; }
probes() {  # each probe's flags are its settings that differ from today's defaults (scripts/probe_table.py)
  for dataset in "$@"; do
    case $dataset in
      office)
        probe office bert4rec-p30 --model bert4rec --set lr_schedule=constant --set epochs=400 --set patience=30 --set patience_steps=0
        probe office caser --model caser --set loss=bce --set epochs=200 --set patience_steps=0
        probe office caser-ce --model caser --set epochs=200 --set patience_steps=0
        probe office gru4rec-ce-p30 --model gru4rec --set epochs=400 --set patience=30 --set patience_steps=0
        probe office gru4rec-p30 --model gru4rec --set loss=bpr-max --set epochs=400 --set patience=30 --set patience_steps=0
        probe office mgt-final-id0.5 --model mgt --set id_dropout=0.5
        probe office mgt-none --model mgt --set modalities=none --set content_scale=1.0 --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe office mgt-s0.1 --model mgt --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe office mgt-s1 --model mgt --set content_scale=1.0 --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe office sasrec-bce --model sasrec --set loss=bce --set epochs=200 --set patience_steps=0
        probe office sasrec-ce --model sasrec --set epochs=200 --set patience_steps=0
        probe office sasrec-ce-d0.5 --model sasrec --set dropout=0.5 --set epochs=200 --set patience_steps=0
        probe office sasrec-ce-wd0 --model sasrec --set epochs=200 --set weight_decay=0.0 --set patience_steps=0
        probe office sasrec-plateau --model sasrec --set epochs=200 --set lr_schedule=plateau --set lr_step=3 --set lr_gamma=0.3
        ;;
      hm)
        probe hm bert4rec-ps500 --model bert4rec --set lr_schedule=constant --set epochs=400 --set patience=10
        probe hm mahn --model mahn --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe hm mahn-l2 --model mahn --set feature_norm=l2 --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe hm mahn-ps500 --model mahn --set skip_untrained=false --set epochs=400
        probe hm mahn-skip --model mahn --set epochs=400
        probe hm mahn-skip-id0.5 --model mahn --set id_dropout=0.5 --set epochs=400
        probe hm mahn-vt --model mahn --set ablate=vt --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe hm mgt --model mgt --set content_scale=1.0 --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe hm mgt-cd0.5 --model mgt --set content_dropout=0.5 --set content_scale=1.0 --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe hm mgt-d0.5 --model mgt --set dropout=0.5 --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe hm mgt-final-id0.5 --model mgt --set id_dropout=0.5
        probe hm mgt-final-id0.5-s1 --model mgt --set id_dropout=0.5 --set seed=1
        probe hm mgt-id0.5 --model mgt --set id_dropout=0.5 --set content_scale=1.0 --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe hm mgt-image --model mgt --set modalities=image --set content_scale=1.0 --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe hm mgt-imp --model mgt --set impute_ids=true --set epochs=400
        probe hm mgt-imp-id0.5 --model mgt --set id_dropout=0.5 --set impute_ids=true --set epochs=400
        probe hm mgt-nogates --model mgt --set gates=false --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe hm mgt-none --model mgt --set modalities=none --set content_scale=1.0 --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe hm mgt-none-ps500 --model mgt --set modalities=none --set skip_untrained=false --set epochs=400
        probe hm mgt-none-s1 --model mgt --set modalities=none --set skip_untrained=false --set epochs=200 --set patience_steps=0 --set seed=1
        probe hm mgt-ps500 --model mgt --set skip_untrained=false --set epochs=400
        probe hm mgt-ps500-s1 --model mgt --set skip_untrained=false --set epochs=400 --set seed=1
        probe hm mgt-s0.01 --model mgt --set content_scale=0.01 --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe hm mgt-s0.1 --model mgt --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe hm mgt-s0.1-s1 --model mgt --set skip_untrained=false --set epochs=200 --set patience_steps=0 --set seed=1
        probe hm mgt-s0.1-s2 --model mgt --set skip_untrained=false --set epochs=200 --set patience_steps=0 --set seed=2
        probe hm mgt-skip --model mgt --set content_scale=1.0 --set epochs=200 --set patience_steps=0
        probe hm mgt-skip-id0.5 --model mgt --set id_dropout=0.5 --set content_scale=1.0 --set epochs=200 --set patience_steps=0
        probe hm mgt-skip-s0.1 --model mgt --set epochs=200 --set patience_steps=0
        probe hm mgt-text --model mgt --set modalities=text --set content_scale=1.0 --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe hm mgt-wd1e-3 --model mgt --set skip_untrained=false --set epochs=200 --set weight_decay=0.001 --set patience_steps=0
        probe hm sasrec-ce --model sasrec --set epochs=200 --set patience_steps=0
        probe hm sasrec-ce-ps500 --model sasrec --set epochs=400
        probe hm sasrec-ce-s1 --model sasrec --set epochs=200 --set patience_steps=0 --set seed=1
        ;;
      hm-cold)  # section 5g: the boost and the places on H&M's new-item split (photos and names)
        probe hm-cold mgt-defaults --model mgt
        probe hm-cold mgt-defaults-id0.5 --model mgt --set id_dropout=0.5
        ;;
      instruments-cold)
        probe instruments-cold mgt --model mgt --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe instruments-cold mgt-id0.5 --model mgt --set id_dropout=0.5 --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe instruments-cold mgt-id0.5-plateau --model mgt --set id_dropout=0.5 --set epochs=200 --set lr_schedule=plateau --set lr_step=3 --set lr_gamma=0.3
        probe instruments-cold mgt-id0.5-wd1e-3 --model mgt --set id_dropout=0.5 --set epochs=200 --set weight_decay=0.001
        probe instruments-cold mgt-id0.8 --model mgt --set id_dropout=0.8 --set epochs=200
        probe instruments-cold mgt-imp-id0.5 --model mgt --set id_dropout=0.5 --set impute_ids=true --set epochs=200 --set patience_steps=0
        probe instruments-cold mgt-defaults --model mgt
        probe instruments-cold mgt-defaults-id0.5 --model mgt --set id_dropout=0.5
        probe instruments-cold mgt-fixed-id0.5 --model mgt --set content_projection=fixed --set id_dropout=0.5 --set skip_untrained=false --set epochs=200 --set patience_steps=0
        probe instruments-cold mgt-defaults-idc10 --model mgt --set id_dropout_count=10
        ;;
      *) echo "no probes for $dataset" >&2; exit 2 ;;
    esac
  done
}

keep_saving() {  # while PID trains into OUT: each minute, its finished runs saved to KEPT (and handed on to REPORT, a
  # report beside it). Each folder appears with its side's first run: until then there is nothing to save or hand on
  local helper=$1 out=$2 kept=$3 report=${4:-}
  while kill -0 "$helper" 2>/dev/null; do
    sleep 60
    if [ -d "$out" ]; then .venv/bin/python scripts/report_runs.py save "$out" "$kept" >/dev/null; fi
    if [ -n "$report" ] && [ -d "$kept" ]; then .venv/bin/python scripts/report_runs.py restore "$kept" "$report"; fi
  done
}

report() {  # mahn reproduce keeps every finished run: a cut report resumes. The finished runs' results are kept in
  # docs/reports/defaults/DATASET/runs (scripts/report_runs.py), so a report can span machines: restored first,
  # saved every minute while it trains and once more at the end
  local dataset=$1 experiments=${2:-compare,groups} out=runs/reproduce/defaults/$1 kept=docs/reports/defaults/$1
  if [ -d "$kept" ]; then .venv/bin/python scripts/report_runs.py restore "$kept" "$out"; fi
  $M reproduce "$(data "$dataset")" --out "$out" --budget standard --seeds "${SEEDS:-3}" --threads 1 \
    --models $MODELS --experiments "$experiments" &
  local helper=$! status=0
  keep_saving $helper "$out" "$kept"
  wait $helper || status=$?
  .venv/bin/python scripts/report_runs.py save "$out" "$kept"
  return $status
}

lane() {  # a second core for a report running beside it: MODELS (compare, or the experiments given) into OUT-b, each
  # finished run handed to the report (through its kept folder) as it finishes; the report trains what is not handed
  # over in time
  local dataset=$1 models=$2 experiments=${3:-compare} out=runs/reproduce/defaults/$1 kept=docs/reports/defaults/$1
  # what any session finished already, so the lane trains none of it again (the report itself does the same)
  if [ -d "$kept" ]; then .venv/bin/python scripts/report_runs.py restore "$kept" "$out-b"; fi
  $M reproduce "$(data "$dataset")" --out "$out-b" --budget standard --seeds "${SEEDS:-3}" --threads 1 \
    --models "$models" --experiments "$experiments" &
  local helper=$!
  keep_saving $helper "$out-b" "$kept" "$out"
  wait $helper
}

case "${1:-}" in
  before|after|probes) "$1" "${@:2}" ;;
  report) report "${@:2}" ;;
  lane) lane "${@:2}" ;;
  *) echo "usage: $0 before|after|probes DATASET... | report DATASET [EXPERIMENTS] | lane DATASET MODELS [EXPERIMENTS]" >&2; exit 2 ;;
esac
