"""annotate/argilla_tool.py on a real Argilla server (tests/argilla_stack.py), driven by the same loop core as Label
Studio (annotate/loop.py) and the real packaged encoder: push, refresh, accept, suspects and export; people stand in
as responses logged through the SDK with the example pool's gold labels (examples/topics_120.jsonl)."""

from __future__ import annotations

import json

import pytest

from annotate.cache import DatasetCache
from annotate.loop import accept, export, push, refresh, suspects
from annotate.tools import AUTO_ACCEPT_USER, CERTIFY, SUSPECT

pytestmark = [pytest.mark.argilla, pytest.mark.slow]
LABELS = ["sports", "business", "science and technology", "politics"]
TEMPLATE = "This text is about {}."


@pytest.fixture(scope="module")
def pushed(argilla_stack, topics_example, tmp_path_factory):
    """The example pool pushed into a new dataset by the loop core."""
    from annotate.argilla_tool import open_dataset
    from annotate.client import connect
    from pool.scorers import LocalScorer

    client = connect(argilla_stack.url, argilla_stack.api_key)
    tool = open_dataset(client, "loop-core-topics", argilla_stack.workspace, api_url=argilla_stack.url, labels=LABELS,
                        create=True)
    cache = DatasetCache(tmp_path_factory.mktemp("cache"), argilla_stack.url, argilla_stack.workspace,
                         "loop-core-topics")
    scorer = LocalScorer(LABELS, TEMPLATE, method="embedding")
    try:
        first = push(topics_example[0], tool, scorer, cache, template=TEMPLATE, progress=False)
        again = push(topics_example[0], tool, scorer, cache, template=TEMPLATE, progress=False)
    finally:
        scorer.close()
    return client, tool, cache, first, again


def _respond(client, tool, decisions: dict) -> None:
    from tests.argilla_review import submit

    submit(tool.dataset, decisions, client.me.id)


def test_push_then_refresh_after_reviews_rewrites_the_pending_suggestions(pushed, topics_example):
    client, tool, cache, first, again = pushed
    gold = topics_example[1]
    assert first.added == 120 and again.added == 0  # idempotent by content id
    before = sorted(tool.records(), key=lambda r: r.score)
    assert len(before) == 120 and all(r.pending and r.suggestion in LABELS and r.text for r in before)
    assert "sort=suggestion.label.score.asc" in first.links["review (least confident first)"]
    _respond(client, tool, {r.id: gold[r.id] for r in before[:30]})  # the 30 least confident
    summary = refresh(tool, cache)
    after = {r.id: r for r in tool.records()}
    pending = [r for r in after.values() if r.pending]
    assert summary.reviewed == 30 and len(pending) == 90 and summary.written == 90
    assert summary.mode.startswith("reviews") and all(r.agent == summary.details["agent"] for r in pending)
    reviewed = [after[r.id] for r in before[:30]]
    assert all(r.status == "submitted" and r.human == gold[r.id] for r in reviewed)
    assert {r.annotator for r in reviewed} == {client.me.username}
    assert refresh(tool, cache).written == 0  # nothing changed: nothing rewritten


def test_accept_certifies_after_the_sample_is_reviewed_export_and_undo(pushed, topics_example):
    """A low target (0.7, planning estimate not inflated) so that a 120-text pool certifies something."""
    client, tool, cache, _, _ = pushed
    gold = topics_example[1]
    first = accept(tool, target=0.7, planning_inflation=1.0, mode="apply")
    assert first.accepted == 0 and first.flagged > 0  # nothing before the sample is reviewed
    assert len([r for r in tool.records() if r.flags.get(CERTIFY)]) == first.flagged
    for _ in range(5):
        todo = {r.id: gold[r.id] for r in tool.records() if r.flags.get(CERTIFY) and r.pending}
        if todo:
            _respond(client, tool, todo)
        summary = accept(tool, target=0.7, planning_inflation=1.0, mode="apply")
        if not summary.details["to_review"]:
            break
    accepted = [r for r in tool.records() if r.accepted]
    assert accepted, summary.details["table"]
    assert sum(gold[r.id] == r.accepted_label for r in accepted) / len(accepted) >= 0.7
    assert all(r.status is None for r in accepted)  # never on a record a person answered
    out = export(tool, cache, cache.root / "export.jsonl")
    rows = [json.loads(line) for line in (cache.root / "export.jsonl").read_text().splitlines()]
    assert out.details["sources"][AUTO_ACCEPT_USER] == len(accepted) == sum(r["source"] == AUTO_ACCEPT_USER
                                                                                for r in rows)
    assert all(set(r["teacher_scores"]) == set(LABELS) for r in rows)
    assert accept(tool, mode="undo").withdrawn == len(accepted)
    assert not any(r.accepted for r in tool.records())


def test_suspects_flag_wrong_labels_with_their_score(pushed, topics_example):
    client, tool, cache, _, _ = pushed
    gold = topics_example[1]
    wrong = [r for r in tool.records() if r.pending][:8]
    _respond(client, tool, {r.id: LABELS[(LABELS.index(gold[r.id]) + 1) % len(LABELS)] for r in wrong})
    summary = suspects(tool, cache)
    flagged = {r.key: r.flags[SUSPECT] for r in tool.records() if SUSPECT in r.flags}
    assert summary.flagged == len(flagged) > 0
    assert len(set(flagged) & {r.key for r in wrong}) >= 4  # most of the flags are the wrong labels
    assert all(0 < s <= 1 for s in flagged.values())
    assert "sort=metadata.suspect.desc" in tool.link("suspects")
