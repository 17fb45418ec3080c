"""Stand-in reviewers: submit (or discard) responses on a pushed dataset through the Argilla SDK.

Used by the round-trip test and by ``scripts/demo_session.sh``, where the gold labels of AG News play the
people who would review the suggestions in the UI::

    python -m tests.argilla_review --dataset ag_news_pool --gold pool.jsonl --count 300 [--seed 0]
    python -m tests.argilla_review ... --count 50 --order lowest-score --report-json round.json

``--order``: ``random`` (a seeded sample of the records, the default), or the pending records (no response yet)
``lowest-score`` first (as the review deep link orders them) or ``margin`` (smallest ``margin`` metadata) first, or
``certify``: the pending records of the certification sample (metadata ``certify`` = 1, what
``python -m annotate accept`` asks people to review), at most ``--count`` of them.
``--report-json`` records how the suggestions the reviewers saw agreed with what they submitted, next to the
static zero-shot suggestion of the same records (argmax of the ``teacher_score_<i>`` metadata).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path


def submit(dataset, decisions: dict[str, str | list[str] | None], user_id) -> int:
    """Add one response per record id in ``decisions``: the label(s) as ``submitted``, or ``discarded`` for
    ``None``. Returns how many records were updated.

    Raises:
        KeyError: a record id is not in the dataset.
    """
    import argilla as rg

    from annotate.dataset import QUESTION

    records = [r for r in dataset.records(with_suggestions=True, with_responses=True) if str(r.id) in decisions]
    found = {str(r.id) for r in records}
    lost = set(decisions) - found
    if lost:
        raise KeyError(f"{len(lost)} record ids not in the dataset, e.g. {sorted(lost)[0]}")
    for record in records:
        value = decisions[str(record.id)]
        status = "discarded" if value is None else "submitted"
        record.responses.add(rg.Response(question_name=QUESTION, value=value, user_id=user_id, status=status))
    dataset.records.log(records)
    return len(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.argilla_review", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--workspace", default=None, help="default: ARGILLA_WORKSPACE or argilla")
    parser.add_argument("--gold", required=True, type=Path, help="JSONL with the pushed texts and a gold label")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--count", type=int, default=300, help="records to review (random sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", choices=("random", "lowest-score", "margin", "certify"), default="random")
    parser.add_argument("--report-json", type=Path, default=None,
                        help="write the agreement of the shown and the zero-shot suggestions with the gold labels")
    args = parser.parse_args(argv)

    import os

    from annotate.client import connect, find_dataset
    from annotate.dataset import record_id

    client = connect(os.environ["ARGILLA_API_URL"], os.environ["ARGILLA_API_KEY"])
    workspace = args.workspace or os.environ.get("ARGILLA_WORKSPACE", "argilla")
    dataset = find_dataset(client, args.dataset, workspace)
    if dataset is None:
        print(f"error: dataset {args.dataset!r} not found", file=sys.stderr)
        return 1
    gold = {}
    with args.gold.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            gold[record_id(str(row[args.text_column]).strip())] = row[args.label_column]
    records = {str(r.id): r for r in dataset.records(with_suggestions=True, with_responses=True)}
    present = sorted(records)
    if args.order == "random":
        chosen = random.Random(args.seed).sample([i for i in present if i in gold], k=min(args.count, len(present)))
    else:
        pending = [i for i in present if i in gold and not list(records[i].responses)]
        if args.order == "certify":
            pending = [i for i in pending if records[i].metadata.get("certify") == 1]
        if args.order in ("lowest-score", "certify"):
            key = lambda i: (records[i].suggestions["label"].score, i)  # noqa: E731
        else:
            key = lambda i: (records[i].metadata.get("margin", 1.0), i)  # noqa: E731
        chosen = sorted(pending, key=key)[:args.count]
    if not chosen:
        print(f"nothing to review in {workspace}/{args.dataset} ({args.order})")
        return 0
    done = submit(dataset, {i: gold[i] for i in chosen}, client.me.id)
    print(f"submitted gold-label responses for {done} records of {workspace}/{args.dataset}")
    if args.report_json is not None:
        from annotate.dataset import question_labels, teacher_key

        labels, _ = question_labels(dataset)
        shown = [records[i].suggestions["label"].value == gold[i] for i in chosen]
        static = [labels[max(range(len(labels)), key=lambda j: records[i].metadata[teacher_key(j)])] == gold[i]
                  for i in chosen]
        agents = sorted({records[i].suggestions["label"].agent for i in chosen})
        report = {"order": args.order, "count": len(chosen), "agreement_shown": sum(shown) / max(len(chosen), 1),
                  "agreement_zero_shot": sum(static) / max(len(chosen), 1), "correct_shown": sum(shown),
                  "correct_zero_shot": sum(static), "agents": agents}
        args.report_json.parent.mkdir(parents=True, exist_ok=True)
        args.report_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"agreement with the submitted labels: shown suggestions {report['agreement_shown']:.4f}, "
              f"zero-shot suggestions {report['agreement_zero_shot']:.4f} ({len(chosen)} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
