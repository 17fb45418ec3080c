"""What fitting ``push``'s adapted head on the first records of a pool, not the whole pool, does to its suggestions.

``annotate push`` (adapted) can start writing records before the whole pool is scored only if the head exists
before the whole pool does: fitted on the first ``N`` records scored, it then suggests for every later record as it
is scored. This benchmark takes scored pools (:class:`pool.store.PoolStore`, as ``push``/``score``/``simulate``
write them) with the gold labels of their texts (or an unlabelled file: no accuracies), and for each ``N`` and each input order (the
file's own, shuffled, and sorted by gold label: the worst case of a file grouped by class) compares, on every
record:

- accuracy of the zero-shot suggestions, of the head fitted on the whole pool (what ``push`` wrote before), and of
  the head fitted on the first ``N`` records (or the zero-shot scores where its guards refuse it);
- the share of records whose suggestion from the first-``N`` head differs from the whole-pool head's in label, or in
  score by more than ``refresh``'s rewrite threshold (0.02) or coarser ones (0.05, 0.1): what a final
  reconciliation against the whole-pool head would rewrite.

    .venv/bin/python benchmarks/push_fit_rows.py --output-dir benchmarks/results/push_fit_rows \\
        --pool ag_news=<store>:../shared/data/classification/ag_news/test.jsonl ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_facts, cpu_line  # noqa: E402

#: Score changes at which a final reconciliation would rewrite a record (refresh's 0.02, and coarser ones).
RECONCILE_THRESHOLDS = (0.02, 0.05, 0.1)


def gold_by_text(path: Path) -> dict[str, str | None]:
    """``{text: label}`` of a JSONL file, in the file's order (``text``, or AG News's ``title`` + ``description`` as
    the readers join them, and the bare ``description``); label ``None`` for an unlabelled file."""
    gold: dict[str, str | None] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            label = str(row["label"]) if "label" in row else None
            if "text" in row:
                gold[row["text"].strip()] = label
            else:
                for text in (f"{row['title']}. {row['description']}", f"{row['title']} {row['description']}",
                             row["description"]):
                    gold[text.strip()] = label
    return gold


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def suggestions(adapted, zero_shot: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """The scores a head fitted on part of a pool gives every record (the zero-shot scores where it was refused)."""
    if adapted.head is None:
        return zero_shot
    return adapted.head.predict_proba(embeddings.astype(np.float64))


def main(pool: Annotated[list[str], typer.Option(help="NAME=STORE:GOLD.jsonl (repeatable): a scored pool folder and "
                                                 "the labelled file its texts come from.")],
         fit_rows: Annotated[str, typer.Option(help="Comma-separated N (records the head is fitted on).")] = "1024,2048,4096",
         output_dir: Annotated[Path, typer.Option(help="Where push_fit_rows.json and .md go.")] = Path("runs/push_fit_rows"),
         seed: Annotated[int, typer.Option(help="Seed of the shuffled order.")] = 0) -> None:
    """Compare first-N heads with the whole-pool head on each pool, in a shuffled and a label-sorted order."""
    from annotate.adaptive import adapt
    from pool.store import PoolStore

    facts = cpu_facts()
    sizes = [int(x) for x in fit_rows.split(",")]
    results = []
    for spec in pool:
        name, rest = spec.split("=", 1)
        store, gold_path = rest.split(":", 1)
        data = PoolStore(Path(store)).load()
        labels = list(data.labels)
        gold_text = gold_by_text(Path(gold_path))
        gold_names = sorted({g for g in gold_text.values() if g is not None})
        if set(gold_names) != {x for x in labels}:  # AG News: gold names differ from the candidate labels' wording
            order_names = {"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3}
            to_index = {g: order_names[g] for g in gold_names}
        else:
            to_index = {g: labels.index(g) for g in gold_names}
        position = {text: i for i, text in enumerate(gold_text)}
        known = sorted((i for i, text in enumerate(data.texts) if text.strip() in gold_text),
                       key=lambda i: position[data.texts[i].strip()])  # the file's order
        x = np.asarray(data.embeddings, dtype=np.float32)[known]
        p0 = np.asarray(data.scores, dtype=np.float64)[known]
        labelled = bool(gold_names)
        y = (np.array([to_index[gold_text[data.texts[i].strip()]] for i in known]) if labelled
             else np.full(len(known), -1))
        whole = adapt(x, p0, labels)
        whole_scores = whole.scores

        def accuracy(scores: np.ndarray) -> float | None:
            return round(float((scores.argmax(1) == y).mean()), 4) if labelled else None

        row = {"pool": name, "records": len(known), "unmatched": len(data.texts) - len(known),
               "zero_shot_acc": accuracy(p0), "whole_pool_acc": accuracy(whole_scores),
               "whole_pool_mode": whole.report.mode, "runs": []}
        rng = np.random.default_rng(seed)
        orders = {"file": np.arange(len(y)), "shuffled": rng.permutation(len(y))}
        if labelled:
            orders["sorted by label"] = np.argsort(y, kind="stable")
        for order_name, order in orders.items():
            for n in sizes:
                if n >= len(y):
                    continue
                first = order[:n]
                part = adapt(x[first], p0[first], labels)
                scores = suggestions(part, p0, x)
                top, whole_top = scores.argmax(1), whole_scores.argmax(1)
                rows = np.arange(len(y))
                gap = np.abs(scores[rows, top] - whole_scores[rows, whole_top])
                relabelled = top != whole_top
                row["runs"].append({"order": order_name, "fit_rows": n, "mode": part.report.mode,
                                    "acc": accuracy(scores),
                                    "label_differs": round(float(relabelled.mean()), 4),
                                    **{f"rewrite_share_{t:g}": round(float((relabelled | (gap > t)).mean()), 4)
                                       for t in RECONCILE_THRESHOLDS}})
        results.append(row)
        print(json.dumps(row), flush=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "push_fit_rows.json").write_text(json.dumps({"facts": facts, "results": results}, indent=1))
    md = [f"CPU: {cpu_line(facts)} (accuracies do not depend on it)", "",
          "| pool | records | zero-shot acc | whole-pool head acc (mode) | order | N | first-N head acc (mode) | "
          "top label differs from whole-pool head | " + " | ".join(f"label or score > {t:g}"
                                                                   for t in RECONCILE_THRESHOLDS) + " |",
          "|---|---|---|---|---|---|---|---|" + "---|" * len(RECONCILE_THRESHOLDS)]
    for row in results:
        for run in row["runs"]:
            md.append(f"| {row['pool']} | {row['records']} | {_fmt(row['zero_shot_acc'])} | "
                      f"{_fmt(row['whole_pool_acc'])} ({row['whole_pool_mode']}) | {run['order']} | {run['fit_rows']} "
                      f"| {_fmt(run['acc'])} "
                      f"({run['mode']}) | {run['label_differs']:.1%} | "
                      + " | ".join(f"{run[f'rewrite_share_{t:g}']:.1%}" for t in RECONCILE_THRESHOLDS) + " |")
    (output_dir / "push_fit_rows.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    typer.run(main)
