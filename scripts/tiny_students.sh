#!/usr/bin/env bash
# Reproduces docs/students.md: tiny students distilled from the pool-adapted head (issue 15).
# Inputs: scored pools runs/issue11/pools/<task>/{pool,eval} (PoolStore + gold.json), made from DATA (../shared/data)
# by `benchmarks/tiny_students.py pools` when absent (python -m annotate simulate's cache is reused).
# Outputs: runs/issue15/<task>/<student>-<setting>/ and runs/issue15/table.md; the reports the docs quote are copied
# to benchmarks/results/tiny_students/ by `benchmarks/tiny_students.py collect` (the command and the machine in each).
# env: TASKS, STUDENTS, MAX_STEPS (600), AUGMENT (1), SPEED_TEXTS (1000), POOLS, OUT, DATA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
POOLS=${POOLS:-runs/issue11/pools}
OUT=${OUT:-runs/issue15}
TASKS=${TASKS:-"ag_news emotion"}
SPEED_TEXTS=${SPEED_TEXTS:-1000}
STUDENTS=${STUDENTS:-"fasttext cnn bilstm"}
COMMON=(--epochs 3 --batch-size 64 --max-steps ${MAX_STEPS:-600} --teacher-method embedding --teacher-engine onnxruntime
        --speed-texts 64 --seed 13)
config() { case $1 in fasttext) echo '{"dim": 32, "buckets": 32768}';; bilstm) echo '{"dim": 128, "hidden": 128}';; cnn) echo '{"dim": 128}';; *) echo '{}';; esac; }
lr() { case $1 in fasttext) echo 3e-2;; bilstm) echo 1e-2;; *) echo 3e-3;; esac; }
for task in $TASKS; do
  dir=$OUT/$task
  [ -f "$POOLS/$task/eval/gold.json" ] || $PY benchmarks/tiny_students.py pools "$task" --data "${DATA:-../shared/data}" --out "$POOLS"
  $PY benchmarks/tiny_students.py prepare "$task" --pools "$POOLS/$task" --out "$dir" > /dev/null
  for s in $STUDENTS; do
    if [ -d "$dir/head0" ]; then
      teacher=(--unlabeled "$dir/pool.jsonl" --teacher-head "$dir/head0" --teacher-embeddings "$POOLS/$task/pool")
    else  # the guard kept the zero-shot scores: they teach
      teacher=(--train "$dir/head0_zero_shot.jsonl")
    fi
    $PY train/finetune.py "${teacher[@]}" --objective soft --student "$s" --student-config "$(config $s)" --lr "$(lr $s)" \
        --eval "$dir/eval.jsonl" --output-dir "$dir/$s-head0" "${COMMON[@]}"
    $PY train/finetune.py --train "$dir/reviewed.jsonl" --unlabeled "$dir/pool.jsonl" --teacher-head "$dir/head1000" \
        --teacher-embeddings "$POOLS/$task/pool" --objective mixed --student "$s" --student-config "$(config $s)" --lr "$(lr $s)" \
        --eval "$dir/eval.jsonl" --output-dir "$dir/$s-reviews1000" "${COMMON[@]}"
  done
  if [ -d "$dir/head0" ] && [ "${AUGMENT:-1}" -gt 0 ]; then  # Tang et al. augmentation, one copy a text
    $PY train/finetune.py --unlabeled "$dir/pool.jsonl" --teacher-head "$dir/head0" --teacher-embeddings "$POOLS/$task/pool" \
        --augment "${AUGMENT:-1}" --objective soft --student fasttext --student-config "$(config fasttext)" --lr "$(lr fasttext)" \
        --eval "$dir/eval.jsonl" --output-dir "$dir/fasttext-head0-augmented" "${COMMON[@]}"
  fi
  head=$dir/head1000
  $PY benchmarks/tiny_students.py speed "$dir"/*-head0* "$dir"/*-reviews1000 --eval "$dir/eval.jsonl" --head "$head" \
      --output "$dir/speed.json" --texts "$SPEED_TEXTS"
done
$PY benchmarks/tiny_students.py table "$OUT" "$OUT/table.md"
