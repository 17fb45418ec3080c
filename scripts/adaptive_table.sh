#!/usr/bin/env bash
# The adaptive-suggestions table of docs/adaptive.md: `python -m annotate simulate` on AG News, emotion and SST-2,
# gold labels standing in for reviewers, three review orders side by side. About 40 minutes on 2 idle cores
# (emotion's 16,000-text pool dominates); each pool is scored and embedded once and cached.
# Usage: bash scripts/adaptive_table.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}/classification
OUT=${2:-runs/adaptive}
PY=${PY:-.venv/bin/python}
COMMON=(--budgets 0,50,100,300,1000 --round-size 25 --strategy least-confidence,margin,random --seed 0)
mkdir -p "$OUT"
lscpu | grep -E "Model name|Flags" > "$OUT/cpu.txt"; uptime >> "$OUT/cpu.txt"
$PY -m annotate simulate "$DATA/ag_news/train_unlabeled_8k_description_only.jsonl" \
  --label "world news" --label sports --label business --label "science and technology" \
  --label-map '{"World": "world news", "Sports": "sports", "Business": "business", "Sci/Tech": "science and technology"}' \
  --hypothesis-template "This news article is about {}." \
  --eval "$DATA/ag_news/test.jsonl" --eval-text-field title --eval-text-field description \
  "${COMMON[@]}" --report-json "$OUT/ag_news.json"
$PY -m annotate simulate "$DATA/emotion/train.jsonl" \
  --label sadness --label joy --label love --label anger --label fear --label surprise \
  --hypothesis-template "This person feels {}." --eval "$DATA/emotion/test.jsonl" \
  "${COMMON[@]}" --report-json "$OUT/emotion.json"
$PY -m annotate simulate "$DATA/sst2/train.jsonl" --label negative --label positive \
  --hypothesis-template "The sentiment of this review is {}." --eval "$DATA/sst2/validation.jsonl" \
  "${COMMON[@]}" --report-json "$OUT/sst2.json"
