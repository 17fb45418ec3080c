#!/usr/bin/env bash
# One real review session with adaptive suggestions (issue 11): a local Argilla 2.8 stack, the service (sentence
# encoder only: single-label requests use the embedding method), an adapted push of the AG News pool, then ROUNDS
# rounds of ROUND gold-label responses submitted lowest-score-first (stand-in reviewers) each followed by
# `python -m annotate refresh`. Per round it records how the suggestions the reviewers saw agreed with what they
# submitted, next to the static zero-shot suggestions of the same records (argmax of teacher_score_<i>).
#
#   bash scripts/adaptive_session.sh                  # into runs/adaptive_session/
#   ROUNDS=3 ROUND=50 LIMIT=1000 bash scripts/adaptive_session.sh    # the first 1,000 lines (sorted by label!)
#   SAMPLE=1000 bash scripts/adaptive_session.sh      # a seeded random sample of 1,000 texts
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-runs/adaptive_session}
POOL=${POOL:-../shared/data/classification/ag_news/train_unlabeled_8k_description_only.jsonl}
ROUNDS=${ROUNDS:-10}
ROUND=${ROUND:-50}
LIMIT=${LIMIT:-}
DATASET=${DATASET:-ag_news_adaptive}
PORT=${PORT:-$($PY -c 'from annotate.stack import free_port; print(free_port())')}
export NM_DISABLE_ANALYTICS=1 ANNOTATE_CACHE_DIR="$OUT/cache"
mkdir -p "$OUT"
LOG="$OUT/transcript.txt"
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
run() { say "\$ $*"; local t0; t0=$(date +%s.%N); "$@" 2>>"$OUT/stderr.log" | { grep -v '%|' || true; } | tee -a "$LOG";
        say "(wall $(echo "$(date +%s.%N) - $t0" | bc) s, load average $(cut -d' ' -f1-3 /proc/loadavg))"; }

say "date: $(date -u +%FT%TZ)"
say "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores"
say "cpu flags (avx/vnni): $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|avx2|avx512f|avx512_vnni|avx_vnni|amx_int8)$' | xargs)"
say "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

cleanup() {
  [ -n "${SERVICE_PID:-}" ] && kill "$SERVICE_PID" 2>/dev/null || true
  $PY -m annotate stack down --state "$OUT/stack.json" >/dev/null 2>&1 || true
}
trap cleanup EXIT
$PY -m annotate stack up --state "$OUT/stack.json" --print-env | grep "^export " > "$OUT/stack.env"
# shellcheck disable=SC1091
source "$OUT/stack.env"
$PY -m service --model none --engine onnxruntime --port "$PORT" > "$OUT/service.log" 2>&1 &
SERVICE_PID=$!
until curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null; do sleep 1; done
URL="http://127.0.0.1:$PORT"

SOURCE="$POOL"
if [ -n "$LIMIT" ]; then SOURCE="$OUT/pool_$LIMIT.jsonl"; head -n "$LIMIT" "$POOL" > "$SOURCE"; fi
if [ -n "${SAMPLE:-}" ]; then  # a seeded random sample (the pool file is sorted by label)
  SOURCE="$OUT/pool_sample_$SAMPLE.jsonl"
  $PY -c 'import random, sys; lines = open(sys.argv[1]).readlines(); n = int(sys.argv[2]);
sys.stdout.writelines(sorted(random.Random(0).sample(lines, n), key=lines.index))' "$POOL" "$SAMPLE" > "$SOURCE"
  say "pool: a seeded random sample of $SAMPLE of the $(wc -l < "$POOL") texts of $POOL"
fi
LABELS=(--label World --label Sports --label Business --label Sci/Tech)
run $PY -m annotate push "$SOURCE" "${LABELS[@]}" --hypothesis-template "This text is about {}." \
    --dataset "$DATASET" --service-url "$URL" --summary-json "$OUT/push.json"
for r in $(seq 1 "$ROUNDS"); do
  run $PY -m tests.argilla_review --dataset "$DATASET" --gold "$SOURCE" --count "$ROUND" --order lowest-score \
      --report-json "$OUT/round_$r.json"
  run $PY -m annotate refresh --dataset "$DATASET" --summary-json "$OUT/refresh_$r.json"
done

$PY - "$OUT" "$ROUNDS" <<'EOF' | tee -a "$LOG"
import json, sys
from pathlib import Path
out, rounds = Path(sys.argv[1]), int(sys.argv[2])
push = json.loads((out / "push.json").read_text())
print(f"\npush: {push['pushed']} records, head {push['head']['mode'] if push['head'] else '-'}, "
      f"scoring+embedding {push['scoring_seconds']} s, fit {push['fit_seconds']} s, Argilla {push['argilla_seconds']} s")
print("\n| round | reviewed before | shown suggestions agree | static zero-shot agree | refresh: head mode | "
      "cv accuracy (zero-shot) | pending changed label | updated | fit s | Argilla update s | audit estimate |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
shown = static = total = 0
for r in range(1, rounds + 1):
    a = json.loads((out / f"round_{r}.json").read_text())
    f = json.loads((out / f"refresh_{r}.json").read_text())
    shown += a["correct_shown"]; static += a["correct_zero_shot"]; total += a["count"]
    cv = "-" if f["cv_accuracy"] is None else f"{f['cv_accuracy']:.3f} ({f['cv_accuracy_zero_shot']:.3f})"
    audit = f["audit"]
    est = (f"{audit['accuracy']:.3f} [{audit['ci_low']:.3f}, {audit['ci_high']:.3f}] n={audit['reviewed']}"
           if audit.get("reviewed") else "-")
    print(f"| {r} | {(r - 1) * a['count']} | {a['agreement_shown']:.3f} | {a['agreement_zero_shot']:.3f} | "
          f"{f['mode']} | {cv} | {f['changed_label']} | {f['updated']} | {f['fit_seconds']:.2f} | "
          f"{f['update_seconds']:.1f} | {est} |")
print(f"| all | {total} | {shown / total:.3f} | {static / total:.3f} | | | | | | | |")
EOF
