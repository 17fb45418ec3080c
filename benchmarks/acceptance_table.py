"""The "Bulk acceptance" table of docs/adaptive.md from ``simulate --accept-precision`` reports.

Usage: python benchmarks/acceptance_table.py benchmarks/results/acceptance/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(path: Path) -> list[str]:
    """One markdown row per budget (and one for the static zero-shot baseline) of one report."""
    report = json.loads(path.read_text())
    name = path.stem
    out = []
    entries = [("zero-shot (static)", report["zero_shot"]["accept"]), *((f"{e['reviewed']:,}", e) for e in report["curve"])]
    for budget, entry in entries:
        a = entry["accept"]
        precision = f"{a['precision']:.3f}" if a["precision"] is not None else "-"
        naive = a["naive"]
        naive_text = f"{naive['share']:.1%} @ {naive['precision']:.3f}" if naive["precision"] is not None else "-"
        out.append(f"| {name} | {budget} | {a['certification_reviews']:,} | {a['share']:.1%} | {precision} | "
                   f"{a['oracle_share']:.1%} | {naive_text} | {entry['human_share']:.1%} |")
    return out


def main(paths: list[str]) -> int:
    print("| report | loop reviews | certification reviews | accepted (of not loop-reviewed) | real precision "
          "| best possible | head's own 0.95 | human share |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        print("\n".join(rows(Path(path))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
