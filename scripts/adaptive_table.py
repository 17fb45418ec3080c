"""The table of docs/adaptive.md from the simulate reports of scripts/adaptive_table.sh: accuracy and ECE of the
zero-shot scores and of the suggestions at each budget, on each task's evaluation split.

Usage: python scripts/adaptive_table.py [RESULTS_DIR]   (default benchmarks/results/adaptive)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TASKS = [("ag_news", "AG News"), ("emotion", "emotion"), ("sst2", "SST-2"), ("imdb", "IMDB"),
         ("cr", "CR"), ("tweeteval_sentiment", "TweetEval sentiment")]


def main(root: Path) -> None:
    budgets = [0, 100, 300, 1000]
    head = " | ".join(f"{b:,} reviews" for b in budgets)
    print(f"| task | pool → eval | zero-shot | {head} |")
    print("|---|---|---|" + "---|" * len(budgets))
    for key, name in TASKS:
        path = root / f"{key}.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        zero = report["zero_shot"]
        cells = []
        for budget in budgets:
            entry = next((e for e in report["curve"] if e["reviewed"] == budget), None)
            if entry is None:
                cells.append("-")
                continue
            delta = entry["eval_accuracy"] - zero["eval_accuracy"]
            mark = " ✗" if delta < -0.01 else ""
            cells.append(f"{entry['eval_accuracy']:.3f} ({delta:+.3f}{mark}) / {entry['eval_ece']:.3f}")
        print(f"| {name} | {report['pool_size']:,} → {report['eval_size']:,} | {zero['eval_accuracy']:.3f} / "
              f"{zero['eval_calibration']['ece']:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("benchmarks/results/adaptive"))
