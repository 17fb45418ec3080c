#!/usr/bin/env bash
# The end of the loop (issue #6), on AG News, outputs under runs/issue6/:
#   1. a real pre-annotation session (scripts/demo_session.sh) whose stand-in reviewers submit the gold labels of
#      REVIEW=1000 records of the 7,984-text pool; its export holds human labels + the teacher's score vectors;
#   2. three transformer students (MiniLM), evaluated on the full AG News test split (7,600 texts):
#      (a) hard labels of the 1,000 reviewed records, (b) the teacher's soft labels for all 7,984 texts,
#      (c) both (mixed objective);
#   3. the students' speed against both zero-shot teachers, measured again for all three in one run;
#   4. the zero-shot teachers on the same test split, and a summary table (runs/issue6/summary.md).
#   bash scripts/student_runs.sh              # STUDENT=fasttext|cnn|bilstm for a tiny student
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN=${RUN:-runs/issue6}
DATA=${ZSC_SHARED_DATA:-../shared/data}
POOL=$DATA/classification/ag_news/train_unlabeled_8k_description_only.jsonl
TEST=$DATA/classification/ag_news/test.jsonl
STUDENT=${STUDENT:-transformer}
EPOCHS=${EPOCHS:-3}
export NM_DISABLE_ANALYTICS=1
mkdir -p "$RUN"
if [ ! -s "$RUN/export/ag_news_reviewed.jsonl" ]; then
  RUN=$RUN REVIEW=${REVIEW:-1000} bash scripts/demo_session.sh
fi
EXPORT=$RUN/export/ag_news_reviewed.jsonl
COMMON=(--eval "$TEST" --eval-text-field title --eval-text-field description --student "$STUDENT" --epochs "$EPOCHS"
        --teacher-method embedding --teacher-engine auto --compare-method nli --speed-texts 1000)
LABELS=(--label World --label Sports --label Business --label Sci/Tech)
set -x
$PY train/finetune.py --train "$EXPORT" --objective hard --output-dir "$RUN/student_a_hard" "${COMMON[@]}"
$PY train/finetune.py --unlabeled "$POOL" "${LABELS[@]}" --objective soft --output-dir "$RUN/student_b_soft" "${COMMON[@]}"
$PY train/finetune.py --train "$EXPORT" --unlabeled "$POOL" --objective mixed --output-dir "$RUN/student_c_mixed" "${COMMON[@]}"
# speed of the three students against both zero-shot teachers again, all in one run (one machine state)
$PY -m train.student_report "$RUN/student_a_hard" "$RUN/student_b_soft" "$RUN/student_c_mixed" --eval "$TEST" \
    --eval-text-field title --eval-text-field description --speed-texts 1000 --teacher-method embedding \
    --compare-method nli --teacher-engine auto
$PY -m train.evaluate --method embedding --dataset ag_news --template 'This text is about {}.' --engine auto \
    --output "$RUN/teacher_embedding.json"
$PY -m train.evaluate --method nli --dataset ag_news --template 'This text is about {}.' --engine auto \
    --output "$RUN/teacher_nli.json"
set +x
$PY - "$RUN" <<'PYEOF' | tee "$RUN/summary.md"
import json, statistics, sys
from pathlib import Path
run = Path(sys.argv[1])
students = [("student_a_hard", "1,000 human labels"), ("student_b_soft", "teacher soft labels, 7,984 texts"),
            ("student_c_mixed", "both")]
reports = {name: json.loads((run / name / "report.json").read_text()) for name, _ in students}
# teachers' texts/s: the median of their timings in the speed run (same texts, same batching as the students)
rates = {}
for r in reports.values():
    for t in r["speed"]["teachers"]:
        rates.setdefault(t["method"], []).append(t["texts_per_s"])
print("| model | trained on | AG News test accuracy | macro-F1 | texts/s | × embedding teacher | × NLI teacher |")
print("|---|---|---|---|---|---|---|")
for name in ("teacher_embedding", "teacher_nli"):
    r = json.loads((run / f"{name}.json").read_text())[0]
    print(f"| zero-shot teacher ({r['method']}, {r['engine']}) | - | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
          f"{statistics.median(rates[r['method']]):.1f} | | |")
for name, what in students:
    r = reports[name]
    e, s = r["evaluation"]["int8"], r["speed"]
    ratios = {t["method"]: t["ratio_int8"] for t in s["teachers"]}
    print(f"| {r['student']} student int8 ({r['objective']}) | {what} | {e['accuracy']:.4f} | {e['macro_f1']:.4f} | "
          f"{s['student_int8']['texts_per_s']} | {ratios.get('embedding')} | {ratios.get('nli')} |")
PYEOF
