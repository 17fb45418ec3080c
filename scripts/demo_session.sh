#!/usr/bin/env bash
# A real pre-annotation session (issue #5), everything on loopback ports, outputs under runs/issue5/:
# Argilla stack up -> zero-shot service up (ONNX Runtime) -> push the AG News unlabeled pool -> screenshot of
# the lowest-score-first deep link -> gold labels submitted for REVIEW records as stand-in reviewers -> export.
#   bash scripts/demo_session.sh                 # the full 7,984-text pool
#   LIMIT=300 REVIEW=100 bash scripts/demo_session.sh   # a small slice
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN=${RUN:-runs/issue5}
POOL=${POOL:-../shared/data/classification/ag_news/train_unlabeled_8k_description_only.jsonl}
[ -f "$POOL" ] || POOL=${ZSC_SHARED_DATA:-/work/shared/data}/classification/ag_news/train_unlabeled_8k_description_only.jsonl
DATASET=${DATASET:-ag_news_pool}
REVIEW=${REVIEW:-300}
LIMIT=${LIMIT:-}
export NM_DISABLE_ANALYTICS=1
mkdir -p "$RUN"
SERVICE_PID=
cleanup() {
  set +e
  [ -n "$SERVICE_PID" ] && kill "$SERVICE_PID" 2>/dev/null && wait "$SERVICE_PID" 2>/dev/null
  [ -f "$RUN/stack.json" ] && $PY -m annotate stack down --state "$RUN/stack.json"
  true
}
trap cleanup EXIT

echo "== Argilla stack (argilla-server 2.8.0, osmem, redis)"
rm -rf "$RUN/stack-data"
$PY -m annotate stack up --state "$RUN/stack.json" --data-dir "$RUN/stack-data" --print-env | grep "^export " | tee "$RUN/stack.env"
# shellcheck disable=SC1091
. "$RUN/stack.env"

echo "== zero-shot service (embedded teacher, ONNX Runtime)"
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$PY -m service --port "$PORT" --engine onnxruntime --log-level warning > "$RUN/service.log" 2>&1 &
SERVICE_PID=$!
SERVICE_URL=http://127.0.0.1:$PORT
for _ in $(seq 300); do curl -sf "$SERVICE_URL/ready" > /dev/null && break; sleep 1; done
curl -sf "$SERVICE_URL/ready"; echo

echo "== push ($POOL${LIMIT:+, first $LIMIT rows})"
PUSH=($PY -m annotate push "$POOL" --label World --label Sports --label Business --label Sci/Tech
      --hypothesis-template "This text is about {}." --dataset "$DATASET" --service-url "$SERVICE_URL"
      --summary-json "$RUN/push_summary.json" ${LIMIT:+--limit "$LIMIT"})
echo "\$ ${PUSH[*]}"
{ time "${PUSH[@]}"; } 2>&1 | tee "$RUN/push.txt"

echo "== screenshot of the review deep link"
URL=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$RUN/push_summary.json")
$PY -m tests.argilla_ui "$URL" "$RUN/argilla_lowest_first.png"

echo "== stand-in reviewers: gold labels for $REVIEW records"
$PY -m tests.argilla_review --dataset "$DATASET" --gold "$POOL" --count "$REVIEW" 2> "$RUN/review.log"

echo "== export"
EXPORT=($PY -m annotate export "$RUN/export/ag_news_reviewed.jsonl" --dataset "$DATASET"
        --summary-json "$RUN/export_summary.json")
echo "\$ ${EXPORT[*]}"
"${EXPORT[@]}" 2> "$RUN/export.log" | tee "$RUN/export.txt"

echo "== timings"
$PY - "$RUN/push_summary.json" <<'PYEOF' | tee "$RUN/timings.txt"
import json, sys
s = json.load(open(sys.argv[1]))
total, model = s["total_seconds"], s["scoring_seconds"]
print(f"push of {s['pushed']} texts: {total:.1f} s total, {model:.1f} s in the model (service round trips, "
      f"{100 * model / total:.0f}%), {s['argilla_seconds']:.1f} s in Argilla upserts")
PYEOF
