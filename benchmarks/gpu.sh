#!/usr/bin/env bash
# The training and evaluation speed benchmark (benchmarks/train_speed.py: one epoch of MAHN and SASRec on Amazon
# Phones, then full and sampled evaluation of every test user) on a CUDA GPU, in fp32 and in bf16; writes
# benchmarks/results/train_speed_cuda_fp32.json and train_speed_cuda_bf16.json (to $OUT too, when it is set).
#
#   benchmarks/gpu.sh [PHONES_USER_SEQUENCE_TXT]     # default: ../shared/data/amazon2014-phones/user_sequence.txt
#
# Needs a Python with torch (CUDA build) and mahn's dependencies; installs this checkout without its dependencies
# when `import mahn` fails. Where the data must travel with the code, copy Phones' user_sequence.txt into an
# ignored folder of the checkout and pass its path.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-$(command -v python3)}
[ -x .venv/bin/python ] && "$PWD/.venv/bin/python" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null \
  && PYTHON=$PWD/.venv/bin/python
if [ $# -ge 1 ]; then export MAHN_PHONES=$1; fi
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
"$PYTHON" -c "import mahn" 2>/dev/null || "$PYTHON" -m pip install -q --no-deps -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for precision in fp32 bf16; do
  out=benchmarks/results/train_speed_cuda_$precision.json
  "$PYTHON" benchmarks/train_speed.py --device cuda --precision "$precision" --threads 8 --out "$out"
  if [ -n "${OUT:-}" ]; then cp "$out" "$OUT/"; fi
done
