#!/usr/bin/env bash
# The GPU machine's check, in one go (under 5 minutes on one H100; each check and its numbers are described in
# benchmarks/gpu_check.py's docstring): device placement of every command, bf16/fp16 STAR and ADORE steps, a tiny
# DRhard RobertaDot under --preset paper-passage (LAMB, fp16, gradient checkpointing, pair-mean), hardneg train
# SIGKILLed and resumed bit for bit with dropout on, hardneg train under torchrun (1 process == a plain run; 2 with
# 2 GPUs), FaissIndex.to_gpu (flat, fp16 flat, IVF-PQ, pq96) against CPU search, NCCL 2 vs 1 process.
# Needs hardneg installed with a CUDA torch (docs/gpus.md): make install TORCH=torch CONSTRAINTS=
#   benchmarks/gpu_check.sh [cuda|cuda:N|cpu] [gpu_check.py options, e.g. --only torchrun,resume-fp16]
#   PYTHON=/path/to/python picks the interpreter; GPU_CHECK_TIMEOUT=seconds (default 300, with cpu 1200)
# On cuda it runs with --require-gpu: no CUDA is exit 2, and Faiss without GPU support fails faiss-gpu.
# Exit 0: every check passed or was skipped (each line says why); 1: a check failed; 2: hardneg is not importable
# or the device cannot be used; 124: the time limit ran out (the lines printed so far say how far it got).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import hardneg, torch" 2>/dev/null; then
  echo "gpu_check: hardneg is not importable by $PY; install it first (make install TORCH=torch CONSTRAINTS=)" >&2
  exit 2
fi
DEVICE=cuda
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then DEVICE=$1; shift; fi
REQUIRE=(--require-gpu)
LIMIT=${GPU_CHECK_TIMEOUT:-300}
if [ "$DEVICE" = cpu ]; then REQUIRE=(); LIMIT=${GPU_CHECK_TIMEOUT:-1200}; fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
timeout "$LIMIT" "$PY" benchmarks/gpu_check.py --device "$DEVICE" ${REQUIRE[@]+"${REQUIRE[@]}"} "$@"
