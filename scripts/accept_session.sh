#!/usr/bin/env bash
# Bulk acceptance in a real Argilla session (issue 22), everything on loopback ports, outputs under runs/accept/:
# Argilla stack up -> push LIMIT texts of the AG News unlabeled pool (in-process scoring, adaptive head) -> REVIEW
# records reviewed lowest score first (gold labels as stand-in reviewers) -> refresh -> accept (dry run: flags the
# certification sample) -> the sample reviewed band by band until accept asks for nothing more -> accept --apply ->
# export (sources) -> refresh (revocations) -> accept --undo.
#   bash scripts/accept_session.sh                              # LIMIT=500 REVIEW=100 PRECISION=0.8
#   LIMIT=2000 PRECISION=0.95 bash scripts/accept_session.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN=${RUN:-runs/accept}
POOL=${POOL:-../shared/data/classification/ag_news/train_unlabeled_8k_description_only.jsonl}
[ -f "$POOL" ] || POOL=${ZSC_SHARED_DATA:-/work/shared/data}/classification/ag_news/train_unlabeled_8k_description_only.jsonl
DATASET=${DATASET:-ag_news_accept}
LIMIT=${LIMIT:-500}
REVIEW=${REVIEW:-100}
PRECISION=${PRECISION:-0.8}
export NM_DISABLE_ANALYTICS=1 ANNOTATE_CACHE_DIR=$RUN/cache
mkdir -p "$RUN"
cleanup() {
  set +e
  [ -f "$RUN/stack.json" ] && $PY -m annotate stack down --state "$RUN/stack.json"
  true
}
trap cleanup EXIT
show() { echo "\$ $*"; "$@"; }

echo "== machine"
$PY -c 'from service.engines.selection import cpu_facts; import json, os; print(json.dumps(cpu_facts())); print("load average", os.getloadavg())'
echo "== Argilla stack (argilla-server 2.8.0, osmem, redis)"
rm -rf "$RUN/stack-data" "$RUN/cache"
$PY -m annotate stack up --state "$RUN/stack.json" --data-dir "$RUN/stack-data" --print-env | grep "^export " | tee "$RUN/stack.env"
# shellcheck disable=SC1091
. "$RUN/stack.env"
head -n "$LIMIT" "$POOL" > "$RUN/pool.jsonl"

echo "== push $LIMIT texts (default teacher in-process, adaptive head)"
show $PY -m annotate push "$RUN/pool.jsonl" -l World -l Sports -l Business -l Sci/Tech \
  --dataset "$DATASET" --log-level warning 2>&1 | tail -n 6
echo "== $REVIEW records reviewed lowest score first, then refresh"
$PY -m tests.argilla_review --dataset "$DATASET" --gold "$RUN/pool.jsonl" --count "$REVIEW" --order lowest-score 2>/dev/null
show $PY -m annotate refresh --dataset "$DATASET" --log-level warning 2>/dev/null | head -n 9
echo "== accept, dry run: the certification sample to review"
show $PY -m annotate accept --dataset "$DATASET" --precision "$PRECISION" --log-level warning
for round in $(seq 20); do
  out=$($PY -m tests.argilla_review --dataset "$DATASET" --gold "$RUN/pool.jsonl" --count 100000 --order certify 2>/dev/null)
  echo "round $round: $out"
  case "$out" in nothing*) break;; esac
  $PY -m annotate accept --dataset "$DATASET" --precision "$PRECISION" --log-level warning > "$RUN/round.txt"
done
echo "== accept, dry run once the sample is reviewed"
show $PY -m annotate accept --dataset "$DATASET" --precision "$PRECISION" --log-level warning --summary-json "$RUN/dry.json"
echo "== accept --apply"
show $PY -m annotate accept --dataset "$DATASET" --precision "$PRECISION" --apply --log-level warning \
  --summary-json "$RUN/apply.json" 2>&1 | tail -n 1 || true
$PY - "$DATASET" "$RUN/pool.jsonl" <<'PYEOF'
import json, sys
from annotate.client import connect, find_dataset
from annotate.dataset import record_id
import os
gold = {record_id(json.loads(l)["text"].strip()): json.loads(l)["label"] for l in open(sys.argv[2])}
client = connect(os.environ["ARGILLA_API_URL"], os.environ["ARGILLA_API_KEY"])
dataset = find_dataset(client, sys.argv[1], os.environ.get("ARGILLA_WORKSPACE", "argilla"))
accepted = [(str(r.id), r.suggestions["label"].value) for r in dataset.records(with_suggestions=True)
            if r.metadata.get("accepted_by")]
right = sum(gold[i] == v for i, v in accepted)
print(f"accepted records measured on the gold labels: {right}/{len(accepted)} right = {right / max(len(accepted), 1):.4f}")
PYEOF
echo "== export (source of each row)"
show $PY -m annotate export "$RUN/export/all.jsonl" --dataset "$DATASET" 2>/dev/null | head -n 3
show $PY -m annotate export "$RUN/export/humans.jsonl" --dataset "$DATASET" --humans-only 2>/dev/null | head -n 3
echo "== refresh after the acceptance (an accepted suggestion the new head disagrees with is revoked)"
show $PY -m annotate refresh --dataset "$DATASET" --summary-json "$RUN/refresh.json" 2>&1 | grep -E "revoked|^records|^pending" || true
echo "== accept --undo"
show $PY -m annotate accept --dataset "$DATASET" --undo --log-level warning 2>/dev/null
