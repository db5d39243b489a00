#!/usr/bin/env bash
# CPU-sized comparison of training methods on SciFact (issue: training engine).
# Starts from zero-shot MiniLM; dev = 10% of train (seeded); test only for the final report.
# Usage: bash benchmarks/train_scifact.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
DATA=${1:-../shared/data}/scifact
OUT=${2:-runs/scifact-methods}
HN=${HN:-hardneg}
mkdir -p "$OUT"
# warm-up hard negatives for STAR, mined once by the start model (train queries, top-200)
[ -f "$OUT/hard.tsv" ] || $HN --quiet mine "$DATA:train" --model minilm --topk 200 --max-length 128 --out "$OUT/hard.tsv"
for method in inbatch rand star ance; do
  extra=""
  [ "$method" = star ] && extra="--negatives $OUT/hard.tsv"
  [ "$method" = ance ] && extra="--refresh-every 30"
  if [ ! -f "$OUT/$method/summary.json" ]; then
    resume=""; [ -d "$OUT/$method/checkpoints" ] && resume="--resume"
    /usr/bin/time -f "$method wall %e s" $HN --quiet train "$method" --data "$DATA" --preset cpu-demo \
      --out "$OUT/$method" $extra $resume
  fi
done
# test evaluation at the model's native max length (256), zero-shot first
$HN --quiet retrieve "$DATA:test" --model minilm --out "$OUT/test-zeroshot"
for method in inbatch rand star ance; do
  $HN --quiet retrieve "$DATA:test" --model "$OUT/$method/model" --max-length 256 --out "$OUT/test-$method"
done
$HN compare zeroshot="$OUT/test-zeroshot/run.trec" inbatch="$OUT/test-inbatch/run.trec" \
  rand="$OUT/test-rand/run.trec" star="$OUT/test-star/run.trec" ance="$OUT/test-ance/run.trec" --data "$DATA:test" --baseline zeroshot
