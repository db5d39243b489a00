#!/usr/bin/env bash
# ADORE on SciFact (CPU-sized): ADORE+zero-shot MiniLM, ADORE+STAR, LambdaLoss vs RankNet,
# and training against PQ-compressed indexes, each model evaluated on each index.
# Dev = 10% of train (seeded, the same carve-out as the other methods); test only for the report.
# Usage: bash benchmarks/adore_scifact.sh [DATA_DIR] [OUT_DIR] [STAR_MODEL]
set -euo pipefail
DATA=${1:-../shared/data}/scifact
OUT=${2:-runs/scifact-adore}
STAR=${3:-runs/scifact-methods/star/model}
HN=${HN:-hardneg}
COMMON="--data $DATA --max-steps ${STEPS:-100} --batch-size 32 --lr ${LR:-1e-5} --doc-max-length 256 --query-max-length 64 --dev-every 25 --save-every 25"
mkdir -p "$OUT"
train() {  # name doc-model extra-args...
  local name=$1 doc=$2; shift 2
  if [ ! -f "$OUT/$name/summary.json" ]; then
    local resume=""; [ -d "$OUT/$name/checkpoints" ] && resume="--resume"
    /usr/bin/time -f "$name wall %e s" $HN --quiet train adore --doc-model "$doc" --out "$OUT/$name" $COMMON "$@" $resume
  fi
}
train minilm-flat minilm --index flat
train minilm-flat-ranknet minilm --index flat --adore-loss ranknet
train star-flat "$STAR" --index flat
train minilm-pq48 minilm --index pq48
train minilm-pq96 minilm --index pq96
# test: every model on every index (zero-shot too)
for model in minilm "$OUT/minilm-flat/model" "$OUT/minilm-flat-ranknet/model" "$STAR" "$OUT/star-flat/model" \
             "$OUT/minilm-pq48/model" "$OUT/minilm-pq96/model"; do
  for index in flat pq48 pq96; do
    tag=$(echo "$model" | sed 's#/model$##; s#.*/##; s#^minilm$#zeroshot#')
    [ -f "$OUT/test/$tag-$index/metrics.json" ] || \
      $HN --quiet retrieve "$DATA:test" --model "$model" --index "$index" --max-length 256 --out "$OUT/test/$tag-$index"
  done
done
$HN compare zeroshot="$OUT/test/zeroshot-flat/run.trec" adore="$OUT/test/minilm-flat-flat/run.trec" \
  adore_ranknet="$OUT/test/minilm-flat-ranknet-flat/run.trec" star="$OUT/test/star-flat/run.trec" \
  adore_star="$OUT/test/star-flat-flat/run.trec" --data "$DATA:test" --baseline zeroshot
