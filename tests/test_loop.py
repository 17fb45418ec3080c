"""annotate/loop.py on a real annotation tool (a Label Studio server, annotate/labelstudio/tool.py) and the real
packaged encoder: push, refresh, accept, suspects and export, as the commands run them; people stand in as API calls
with the example pool's gold labels (examples/topics_120.jsonl)."""

from __future__ import annotations

import json

import pytest

from annotate.cache import DatasetCache
from annotate.labelstudio.tool import open_project
from annotate.loop import accept, export, push, refresh, suspects
from annotate.tools import AUTO_ACCEPT_USER, CERTIFY, SUSPECT

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
LABELS = ["sports", "business", "science and technology", "politics"]
TEMPLATE = "This text is about {}."


@pytest.fixture(scope="module")
def pushed(labelstudio, topics_example, tmp_path_factory):
    """The example pool pushed into a new project, as `push --tool labelstudio` does."""
    from annotate.labelstudio.client import LabelStudio
    from pool.scorers import LocalScorer

    client = LabelStudio(labelstudio.url, labelstudio.api_key)
    tool = open_project(client, "loop topics", labels=LABELS, create=True)
    cache = DatasetCache(tmp_path_factory.mktemp("cache"), client.url, "labelstudio", "loop topics")
    scorer = LocalScorer(LABELS, TEMPLATE, method="embedding")
    try:
        first = push(topics_example[0], tool, scorer, cache, template=TEMPLATE, progress=False)
        again = push(topics_example[0], tool, scorer, cache, template=TEMPLATE, progress=False)
    finally:
        scorer.close()
    return client, tool, cache, first, again


def test_push_adds_every_text_once_with_the_heads_suggestions(pushed):
    client, tool, cache, first, again = pushed
    assert first.added == 120 and again.added == 0  # idempotent by content id
    records = tool.records()
    assert len(records) == 120 and all(r.pending and r.suggestion in LABELS for r in records)
    assert len(cache.load_pool()) == 120  # scored once, cached for every later step
    assert client.project(tool.id)["model_version"] == records[0].agent
    assert client.project(tool.id)["sampling"] == "Uncertainty sampling"


def test_refresh_after_reviews_writes_a_new_version_and_sampling_serves_the_least_confident(pushed, topics_example):
    client, tool, cache, _, _ = pushed
    gold = topics_example[1]
    before = sorted(tool.records(), key=lambda r: r.score)
    for record in before[:30]:  # the 30 least confident, as uncertainty sampling serves them
        client.create_annotation(record.key, tool.config.result(gold[record.id]))
    summary = refresh(tool, cache)
    after = tool.records()
    pending = [r for r in after if r.pending]
    assert summary.reviewed == 30 and len(pending) == 90 and summary.written == 90
    version = client.project(tool.id)["model_version"]
    assert version != before[0].agent and all(r.agent == version for r in pending)
    assert summary.revision and summary.mode.startswith("reviews")
    served = client.request("GET", f"/api/projects/{tool.id}/next/")
    lowest = min(pending, key=lambda r: r.score)
    assert served["id"] == lowest.key  # the least confident pending task of the new version
    assert refresh(tool, cache).written == 0  # nothing changed: nothing rewritten


def test_accept_certifies_after_the_sample_is_reviewed_and_undo_restores(pushed, topics_example):
    """A low target (0.7, planning estimate not inflated) so that a 120-text pool certifies something; the promise is
    checked on gold: the accepted suggestions are right at least 70% of the time."""
    client, tool, cache, _, _ = pushed
    gold = topics_example[1]
    first = accept(tool, target=0.7, planning_inflation=1.0, mode="apply")
    assert first.accepted == 0 and first.flagged > 0  # nothing before the sample is reviewed
    flagged = [r for r in tool.records() if r.flags.get(CERTIFY)]
    assert len(flagged) == first.flagged and "certify" not in tool.link("certify")  # a tab id, not a filter string
    for _ in range(5):
        todo = [r for r in tool.records() if r.flags.get(CERTIFY) and r.pending]
        for record in todo:
            client.create_annotation(record.key, tool.config.result(gold[record.id]))
        summary = accept(tool, target=0.7, planning_inflation=1.0, mode="apply")
        if not summary.details["to_review"]:
            break
    accepted = [r for r in tool.records() if r.accepted]
    assert accepted, summary.details["table"]
    assert sum(gold[r.id] == r.accepted_label for r in accepted) / len(accepted) >= 0.7
    auto = client.user_id(AUTO_ACCEPT_USER)
    humans = {t["id"] for t in client.tasks(tool.id) if any(a["completed_by"] != auto for a in t["annotations"])}
    assert not humans & {r.key for r in accepted}  # never on a task a person answered
    out = export(tool, cache, cache.root / "export.jsonl")
    rows = [json.loads(line) for line in (cache.root / "export.jsonl").read_text().splitlines()]
    assert out.details["sources"][AUTO_ACCEPT_USER] == len(accepted) == sum(r["source"] == AUTO_ACCEPT_USER
                                                                                for r in rows)
    assert all(r["teacher_scores"] and set(r["teacher_scores"]) == set(LABELS) for r in rows)
    humans_only = export(tool, cache, cache.root / "humans.jsonl", humans_only=True)
    assert humans_only.details["sources"][AUTO_ACCEPT_USER] == 0
    assert accept(tool, mode="undo").withdrawn == len(accepted)
    assert not any(r.accepted for r in tool.records())


def test_suspects_flag_wrong_labels_with_their_score(pushed, topics_example):
    client, tool, cache, _, _ = pushed
    gold = topics_example[1]
    wrong = [r for r in tool.records() if r.pending][:8]
    for record in wrong:  # a careless reviewer: the label after the right one
        bad = LABELS[(LABELS.index(gold[record.id]) + 1) % len(LABELS)]
        client.create_annotation(record.key, tool.config.result(bad))
    summary = suspects(tool, cache)
    flagged = {r.key: r.flags[SUSPECT] for r in tool.records() if SUSPECT in r.flags}
    assert summary.flagged == len(flagged) > 0
    assert len(set(flagged) & {r.key for r in wrong}) >= 4  # most of the flags are the wrong labels
    assert all(0 < s <= 1 for s in flagged.values())
