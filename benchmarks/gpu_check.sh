#!/usr/bin/env bash
# The GPU machine's check, in one go (under 5 minutes): device placement of every command, bf16/fp16
# STAR and ADORE steps, fp16 kill + resume exactness, FaissIndex.to_gpu (flat, fp16 flat, IVF-PQ, pq96)
# against CPU search, NCCL 2 vs 1 process.
# Needs hardneg installed with a CUDA torch (README "GPUs"): make install TORCH=torch CONSTRAINTS=
#   benchmarks/gpu_check.sh [cuda|cuda:N]        PYTHON=/path/to/python to pick the interpreter
# Exit 0: every check passed or was skipped (each says why); 1: a check failed; 2: no usable GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import hardneg, torch" 2>/dev/null; then
  echo "gpu_check: hardneg is not importable by $PY; install it first (make install TORCH=torch CONSTRAINTS=)" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
timeout 300 "$PY" benchmarks/gpu_check.py --device "${1:-cuda}"
