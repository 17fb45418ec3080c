#!/usr/bin/env bash
# The adaptive-suggestions table of docs/adaptive.md: `python -m annotate simulate` on six single-label tasks, gold
# labels standing in for reviewers, least-confidence order, at 0 / 100 / 300 / 1,000 reviews. Each pool is scored and
# embedded once and cached (a cached and a fresh run give the same figures). Pools are capped (--pool-sample,
# --eval-sample) so the whole table scores ~16k texts (the shared 2-core machine ran at load 15-30); the dev tasks have no split and are split here with
# --holdout 0.3 --split-seed 0 (a seeded random permutation of the file: the first 30% evaluate, the rest is the pool).
# Usage: bash scripts/adaptive_table.sh [DATA_DIR] [OUT_DIR] [TASK...]   (BUDGETS=0,100,300,1000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}/classification
OUT=${2:-benchmarks/results/adaptive}
shift $(( $# > 2 ? 2 : $# )) || true
TASKS=("${@:-tweeteval_sentiment imdb cr ag_news emotion sst2}")
PY=${PY:-.venv/bin/python}
COMMON=(--budgets "${BUDGETS:-0,100,300,1000}" --round-size 25 --strategy "${STRATEGY:-least-confidence}" --seed 0
        --split-seed 0)
SENTIMENT="The sentiment of this review is {}."
mkdir -p "$OUT"
$PY -c "import json, os; from service.engines.selection import cpu_facts; print(json.dumps({**cpu_facts(), 'load_average': os.getloadavg()}))" > "$OUT/cpu.json"
for task in ${TASKS[*]}; do
  case $task in
    tweeteval_sentiment)
      $PY -m annotate simulate "$DATA/dev_tasks/tweeteval_sentiment/test.jsonl" --label negative --label neutral \
        --label positive --hypothesis-template "The sentiment of this tweet is {}." --holdout 0.3 --pool-sample 3000 \
        --eval-sample 1500 "${COMMON[@]}" --report-json "$OUT/tweeteval_sentiment.json" ;;
    imdb)
      $PY -m annotate simulate "$DATA/dev_tasks/imdb/test_sample5k.jsonl" --label negative --label positive \
        --hypothesis-template "$SENTIMENT" --holdout 0.3 --pool-sample 1000 --eval-sample 500 \
        "${COMMON[@]}" --report-json "$OUT/imdb.json" ;;
    cr)
      $PY -m annotate simulate "$DATA/dev_tasks/cr/all.jsonl" --label negative --label positive \
        --hypothesis-template "$SENTIMENT" --holdout 0.3 --pool-sample 1500 --eval-sample 800 \
        "${COMMON[@]}" --report-json "$OUT/cr.json" ;;
    ag_news)
      $PY -m annotate simulate "$DATA/ag_news/train_unlabeled_8k_description_only.jsonl" \
        --label "world news" --label sports --label business --label "science and technology" \
        --label-map '{"World": "world news", "Sports": "sports", "Business": "business", "Sci/Tech": "science and technology"}' \
        --hypothesis-template "This news article is about {}." --pool-sample 1500 \
        --eval "$DATA/ag_news/test.jsonl" --eval-text-field title --eval-text-field description --eval-sample 1000 \
        "${COMMON[@]}" --report-json "$OUT/ag_news.json" ;;
    emotion)
      $PY -m annotate simulate "$DATA/emotion/train.jsonl" \
        --label sadness --label joy --label love --label anger --label fear --label surprise \
        --hypothesis-template "This person feels {}." --pool-sample 2000 --eval "$DATA/emotion/test.jsonl" --eval-sample 1000 \
        "${COMMON[@]}" --report-json "$OUT/emotion.json" ;;
    sst2)
      $PY -m annotate simulate "$DATA/sst2/train.jsonl" --label negative --label positive \
        --hypothesis-template "$SENTIMENT" --pool-sample 1500 --eval "$DATA/sst2/validation.jsonl" \
        "${COMMON[@]}" --report-json "$OUT/sst2.json" ;;
    *) echo "unknown task $task" >&2; exit 2 ;;
  esac
done
