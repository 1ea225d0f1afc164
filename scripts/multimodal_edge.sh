#!/usr/bin/env bash
# The runs behind docs/investigations/rare-items.md's comparison of MGT (ours), MAHN and the ID-only
# transformers, in two lanes that can run side by side on two cores (each run uses one thread):
#   scripts/multimodal_edge.sh a   # H&M (full budget) and Office (standard budget): mahn reproduce, 3 seeds
#   scripts/multimodal_edge.sh b   # Instruments, one seed each (scripts/probe.sh), and its new-item split
#   scripts/multimodal_edge.sh c   # more of the same, on a third core
# Every finished run is kept and skipped on a rerun; a cut run resumes. Data: scripts/real_data.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/real}
M=.venv/bin/mahn
MODELS=mahn,mgt,sasrec,bert4rec,popularity
probe() { scripts/probe.sh "$WORK/$1" "runs/compare/$1" "${@:2}"; }

case "${1:-}" in
  a)
    $M reproduce "$WORK/office" --out runs/reproduce/office --budget standard --seeds 3 --threads 1 \
      --models $MODELS --experiments compare,groups,ablations
    $M reproduce "$WORK/hm" --out runs/reproduce/hm-full --budget full --seeds 3 --threads 1 \
      --models $MODELS --experiments compare,groups,cold
    ;;
  b)
    [ -f "$WORK/instruments-cold/manifest.json" ] || $M cold-split "$WORK/instruments" --out "$WORK/instruments-cold"
    probe instruments mgt --model mgt --epochs 100 --patience 10
    probe instruments-cold mgt-iddrop --model mgt --set id_dropout=0.5 --epochs 30 --patience 5
    probe instruments-cold sasrec --model sasrec --epochs 30 --patience 5
    probe instruments-cold popularity --model popularity
    probe instruments mgt-constlr --model mgt --lr-gamma 1 --epochs 100 --patience 10
    probe instruments sasrec-ce --model sasrec --set loss=ce --epochs 100 --patience 10
    # MGT's content scale and dropout (rare-items.md section 8; stopped by hand there at epochs 12, 12, 28)
    probe instruments mgt-gain0.02 --model mgt --set content_gain=0.02 --epochs 100 --patience 10
    probe instruments mgt-gain0.2 --model mgt --set content_gain=0.2 --epochs 100 --patience 10
    probe instruments mgt-drop0.5 --model mgt --set dropout=0.5 --epochs 100 --patience 10
    ;;
  c)  # the second Instruments lane
    probe instruments-cold mahn-iddrop --set id_dropout=0.5 --epochs 30 --patience 5
    probe instruments-cold mahn --epochs 30 --patience 5
    probe instruments bert4rec-seed1 --model bert4rec --seed 1 --epochs 100 --patience 10
    ;;
  *) echo "usage: $0 a|b|c" >&2; exit 2 ;;
esac
