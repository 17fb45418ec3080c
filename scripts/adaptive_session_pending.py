#!/usr/bin/env python
# Usage: .venv/bin/python scripts/adaptive_session_pending.py runs/adaptive_session 50   (after scripts/adaptive_session.sh)
"""Per round of the recorded session: the exact head (reviews in the order they were submitted, from the stack's
SQLite; revision checked against refresh_<r>.json) and the accuracy of ALL pending suggestions vs gold."""
import json
import sqlite3
import sys
from pathlib import Path

import numpy as np

from annotate.adaptive import adapt
from annotate.cache import sort_pool
from annotate.dataset import record_id
from pool.store import PoolStore

out = Path(sys.argv[1]); size = int(sys.argv[2])
pool = sort_pool(PoolStore(next(out.glob("cache/*/*/*/pool"))).load())
labels = pool.labels
row = {rid: i for i, rid in enumerate(pool.ids)}
gold_by_id = {}
for line in open(next(out.glob("pool_sample_*.jsonl"))):
    r = json.loads(line); gold_by_id[record_id(r["text"].strip())] = labels.index(r["label"])
gold = np.array([gold_by_id[i] for i in pool.ids]); zs = pool.scores
db = sqlite3.connect(out / "stack-data" / "argilla.db")
order = [(ext, json.loads(v)) for ext, v in db.execute(
    "select r.external_id, s.\"values\" from responses s join records r on r.id = s.record_id where s.status='submitted' order by s.inserted_at, r.external_id")]
rows = []
a0 = adapt(pool.embeddings, zs, labels, ids=pool.ids)
rows.append({"round": 0, "reviewed": 0, "revision": a0.report.revision, "pending_acc_head": float(np.mean(a0.scores.argmax(1) == gold)),
             "pending_acc_zero_shot": float(np.mean(zs.argmax(1) == gold))})
for r in range(1, len(order) // size + 1):
    reviewed = {row[ext]: labels.index(v["label"]["value"]) for ext, v in order[:r * size]}
    a = adapt(pool.embeddings, zs, labels, ids=pool.ids, reviewed=reviewed)
    ref = json.loads((out / f"refresh_{r}.json").read_text())
    pending = np.array([i for i in range(len(gold)) if i not in reviewed])
    rows.append({"round": r, "reviewed": len(reviewed), "revision": a.report.revision,
                 "revision_matches": a.report.revision == ref["revision"],
                 "pending_acc_head": float(np.mean(a.scores[pending].argmax(1) == gold[pending])),
                 "pending_acc_zero_shot": float(np.mean(zs[pending].argmax(1) == gold[pending]))})
    print(json.dumps(rows[-1]), flush=True)
(out / "pending_accuracy.json").write_text(json.dumps(rows, indent=2) + "\n")
