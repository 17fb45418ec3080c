"""Choose bulk acceptance's planning settings (``AcceptanceSettings.planning_inflation``, ``first_test``) on tuning
pools: the review loop runs once per pool (least confidence, rounds of 25), and every candidate setting runs its own
certification session (own sample, reused across budgets) on the same per-budget suggestions.

An approximation for choosing settings only: in ``simulate --accept-precision`` the certification records are kept
out of the head's fit and of the review order, which changes the loop slightly; here the loop ignores them.
Reported figures come from ``simulate`` itself (docs/adaptive.md, "Bulk acceptance").

Usage (pools scored and cached by ``python -m annotate simulate`` first):

    python benchmarks/acceptance_tune.py POOL.jsonl --label negative --label positive \
        --hypothesis-template "The sentiment of this review is {}." --budgets 0,300,1000 --output runs/tune.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotate.adaptive import HeadConfig, adapt, pool_adaptation  # noqa: E402
from annotate.simulate import (  # noqa: E402
    AcceptanceSettings,
    AcceptanceState,
    LabelledSplit,
    acceptance_entry,
    gold_indices,
    read_labelled,
    scored_split,
)
from annotate.strategies import get_strategy  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pool", type=Path)
    parser.add_argument("--label", action="append", required=True)
    parser.add_argument("--label-map", default=None)
    parser.add_argument("--hypothesis-template", required=True)
    parser.add_argument("--budgets", default="0,300,1000")
    parser.add_argument("--inflation", default="1.5,2,3")
    parser.add_argument("--first-test", default="2,3,4")
    parser.add_argument("--scope", default="label")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path,
                        default=Path.home() / ".cache" / "zeroshot-preannotate" / "annotate" / "simulate")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)

    from benchmarks.machine import cpu_facts

    labels = args.label
    texts, gold = read_labelled(args.pool, ["text"], "label")
    y = gold_indices(gold, labels, json.loads(args.label_map) if args.label_map else None, args.pool)
    key = {"labels": labels, "hypothesis_template": args.hypothesis_template, "method": "embedding",
           "model": "packaged:all-MiniLM-L6-v2"}

    class _NoScorer:  # the pool must be cached already: this script never loads a model
        def score(self, texts):
            raise SystemExit(f"{args.pool} is not scored yet: run python -m annotate simulate on it once")

    pool = LabelledSplit(*scored_split(texts, _NoScorer(), args.cache_dir, key), y)
    n = len(y)
    budgets = sorted(int(b) for b in args.budgets.split(","))
    settings = [AcceptanceSettings(scope=args.scope, planning_inflation=float(i), first_test=float(f))
                for i, f in itertools.product(args.inflation.split(","), args.first_test.split(","))]
    states = [AcceptanceState.start(n, s, args.seed) for s in settings]
    rows = {i: [] for i in range(len(settings))}
    config = HeadConfig(seed=args.seed)
    pseudo = pool_adaptation(pool.embeddings, pool.zero_shot, labels, config)
    strategy, rng, reviewed, adapted = get_strategy("least-confidence"), np.random.default_rng(args.seed), {}, None
    began = time.perf_counter()
    for budget in budgets:
        while len(reviewed) < budget:
            current = adapted.scores if adapted is not None else pool.zero_shot
            pending = np.setdiff1d(np.arange(n), np.fromiter(reviewed, dtype=np.int64, count=len(reviewed)))
            take = strategy.select(current, pending, min(25, budget - len(reviewed)), rng)
            reviewed.update({int(r): int(pool.gold[r]) for r in take})
            adapted = adapt(pool.embeddings, pool.zero_shot, labels, reviewed=reviewed, config=config, pseudo=pseudo)
        adapted = adapt(pool.embeddings, pool.zero_shot, labels, reviewed=reviewed, config=config, pseudo=pseudo)
        for i, state in enumerate(states):
            entry = acceptance_entry(pool, labels, adapted.scores, reviewed, state)
            a = entry["accept"]
            rows[i].append({"reviewed": budget, "share": round(a["share"], 4), "precision": a["precision"],
                            "certification_reviews": a["certification_reviews"],
                            "human_share": round(entry["human_share"], 4), "oracle_share": round(a["oracle_share"], 4)})
    result = {"pool": str(args.pool), "scope": args.scope, "cpu": cpu_facts(), "seconds": time.perf_counter() - began,
              "settings": [{"planning_inflation": s.planning_inflation, "first_test": s.first_test, "curve": rows[i]}
                           for i, s in enumerate(settings)]}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for s in result["settings"]:
        print(f"inflation {s['planning_inflation']:g} first_test {s['first_test']:g}: " + "; ".join(
            f"{r['reviewed']}: share {r['share']:.3f} prec {r['precision'] if r['precision'] is None else round(r['precision'], 3)} "
            f"cert {r['certification_reviews']} human {r['human_share']:.3f}" for r in s["curve"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
