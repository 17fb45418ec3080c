"""``annotate/suspects.py`` and ``python -m annotate suspects``: label-issue detection on reviewed records.

The detection runs on real sentence embeddings (the packaged all-MiniLM-L6-v2, embedding method) of real AG News
texts, with a known share of the reviews flipped, and is measured against chance (a flagged set drawn at random
has precision = the flip rate). The command runs against the real Argilla stack (tests/argilla_stack.py) with the
real service over HTTP (embedding method); stand-in reviewers submit gold labels, some flipped on purpose, and a
second user (a real Argilla annotator account) answers some records again for the multi-annotator path. Nothing is
mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annotate.suspects import (
    MIN_REVIEWS,
    SuspectsError,
    detect,
    detection_metrics,
    find_suspects,
    flip_labels,
    out_of_fold_probabilities,
)

AG_LABELS = ["world news", "sports", "business", "science and technology"]
AG_GOLD = {"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3}


def test_flip_labels_rate_uniform_other_label_and_deterministic():
    gold = np.repeat(np.arange(4), 5000)
    answers, flipped = flip_labels(gold, 4, 0.1, seed=3)
    assert abs(flipped.mean() - 0.1) < 0.01
    assert (answers[flipped] != gold[flipped]).all() and (answers[~flipped] == gold[~flipped]).all()
    shift = (answers[flipped] - gold[flipped]) % 4  # uniform over the three other labels
    assert np.allclose(np.bincount(shift, minlength=4)[1:] / flipped.sum(), 1 / 3, atol=0.03)
    again, flipped_again = flip_labels(gold, 4, 0.1, seed=3)
    assert (again == answers).all() and (flipped_again == flipped).all()
    assert not flip_labels(gold, 4, 0.1, seed=4)[1].tolist() == flipped.tolist()
    assert not flip_labels(gold, 4, 0.0, seed=3)[1].any()


def test_find_suspects_refuses_bad_shapes_and_too_few_reviews():
    with pytest.raises(SuspectsError, match="probabilities of shape"):
        find_suspects(np.array([0, 1]), np.full((2, 3), 1 / 3), ["a", "b"])
    with pytest.raises(SuspectsError, match="probabilities of shape"):
        find_suspects(np.array([0, 2]), np.full((2, 2), 0.5), ["a", "b"])
    x = np.random.default_rng(0).normal(size=(50, 8))
    p0 = np.full((50, 2), 0.5)
    with pytest.raises(SuspectsError, match=f"at least {MIN_REVIEWS}"):
        out_of_fold_probabilities(x, p0, ["a", "b"], {i: i % 2 for i in range(MIN_REVIEWS - 1)})
    with pytest.raises(SuspectsError, match="at least two reviewed labels"):
        out_of_fold_probabilities(x, p0, ["a", "b"], {i: 1 for i in range(30)})


@pytest.fixture(scope="module")
def ag_pool(data_dir):
    """1,331 AG News pool texts (every 6th, all four labels): embeddings and zero-shot scores of the packaged
    MiniLM (embedding method), gold labels."""
    from pool.scorers import LocalScorer

    rows = [json.loads(line) for line in (data_dir / "classification/ag_news/train_unlabeled_8k_description_only.jsonl")
            .open(encoding="utf-8")][::6]
    scorer = LocalScorer(AG_LABELS, "This news article is about {}.", method="embedding", batch_size=128)
    try:
        texts = [r["text"] for r in rows]
        return {"x": scorer.embed(texts), "p0": scorer.score(texts), "y": np.array([AG_GOLD[r["label"]] for r in rows])}
    finally:
        scorer.close()


@pytest.mark.slow
def test_detection_finds_flipped_reviews_far_above_chance(ag_pool):
    """300 random reviews, 10% flipped: the flagged set is mostly flips and catches most of them."""
    x, p0, y = ag_pool["x"], ag_pool["p0"], ag_pool["y"]
    rows = np.random.default_rng(0).choice(len(y), 300, replace=False)
    answers, flipped = flip_labels(y, 4, 0.1, seed=0)
    report = detect(x, p0, AG_LABELS, {int(r): int(answers[r]) for r in rows})
    metrics = detection_metrics(report, set(np.flatnonzero(flipped).tolist()))
    print(metrics)
    assert metrics["reviewed"] == 300 and metrics["flipped"] == int(flipped[rows].sum()) > 15
    assert report.method == "confident-learning" and report.probabilities.shape == (300, 4)
    assert np.allclose(report.probabilities.sum(axis=1), 1)
    chance = metrics["flipped"] / 300
    assert metrics["precision"] > 3 * chance and metrics["recall"] > 0.5 and metrics["auroc"] > 0.85
    # the out-of-fold head has not seen the flipped labels: it disagrees with most of them, and agrees with most
    # of the others (the flipped labels are what it is measured against, so its accuracy on them is low)
    assert (report.suggested[np.isin(report.rows, np.flatnonzero(flipped))] != report.given[
        np.isin(report.rows, np.flatnonzero(flipped))]).mean() > 0.7
    # scores: in [0, 1], higher for the flipped ones; summaries add up
    assert ((report.score >= 0) & (report.score <= 1)).all()
    truth = np.isin(report.rows, np.flatnonzero(flipped))
    assert report.score[truth].mean() > report.score[~truth].mean() + 0.3
    per_label = report.per_label()
    assert sum(s["reviewed"] for s in per_label.values()) == 300
    assert sum(s["flagged"] for s in per_label.values()) == metrics["flagged"]


@pytest.mark.slow
def test_crowdlab_with_several_annotators_finds_the_careless_one(ag_pool):
    """Three annotators on 240 records (two careful, one flipping 40%): CROWDLAB ranks the careless one last and
    its consensus fixes most of its flips."""
    x, p0, y = ag_pool["x"], ag_pool["p0"], ag_pool["y"]
    rows = np.random.default_rng(1).choice(len(y), 240, replace=False)
    careless, careless_flip = flip_labels(y, 4, 0.4, seed=1)
    careful, careful_flip = flip_labels(y, 4, 0.03, seed=2)
    annotations, who = {}, {}
    for i, r in enumerate(rows):
        r = int(r)
        answers = {"ann": int(careful[r]), "bob": int(y[r])} if i % 2 else {"cat": int(careless[r]), "ann": int(careful[r])}
        if i % 3 == 0:
            answers["cat"] = int(careless[r])
        annotations[r] = answers
        who[r] = next(iter(answers))
    reviewed = {r: annotations[r][who[r]] for r in annotations}
    report = detect(x, p0, AG_LABELS, reviewed, annotations=annotations, annotators=who)
    assert report.method == "crowdlab" and report.consensus is not None
    people = report.per_annotator()
    assert set(people) == {"ann", "bob", "cat"}
    quality = {name: s["annotator_quality"] for name, s in people.items()}
    assert quality["cat"] < min(quality["ann"], quality["bob"]) - 0.1, quality
    gold = y[report.rows]
    assert (report.consensus == gold).mean() > 0.93
    wrong_given = report.given != gold
    assert report.score[wrong_given].mean() > report.score[~wrong_given].mean()


# ---------------------------------------------------------------------------------------------------------------
# python -m annotate suspects against the real Argilla stack
# ---------------------------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def _run(stack, cache: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, **stack.env(), "PYTHONUNBUFFERED": "1", "ANNOTATE_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "annotate", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _state(stack, name: str) -> dict:
    """``{id: (suggestion value, score, agent, [(user, value, status)], metadata)}`` of every record."""
    from tests.test_annotate_argilla import dataset_of

    out = {}
    for record in dataset_of(stack, name).records(with_suggestions=True, with_responses=True):
        s = list(record.suggestions)[0]
        answers = sorted((str(r.user_id), r.value, str(getattr(r.status, "value", r.status))) for r in record.responses)
        out[str(record.id)] = (s.value, s.score, s.agent, answers, dict(record.metadata))
    return out


@pytest.fixture(scope="module")
def embedding_service(cache_dir):
    """The real service with the packaged sentence encoder (embedding method, POST /embed)."""
    from service.app import create_app
    from service.config import Settings

    from .conftest import LiveServer

    settings = Settings(model="none", embedding_model="default", method="embedding", engine="onnxruntime",
                        cache_dir=cache_dir)
    with LiveServer(create_app(settings)) as live:
        assert live.wait_ready(300).status_code == 200
        yield live


@pytest.fixture(scope="module")
def reviewed_dataset(argilla_stack, embedding_service, data_dir, tmp_path_factory):
    """160 AG News test texts pushed with adaptation; 120 submitted by the owner, 12 of them with a wrong label."""
    from annotate.dataset import record_id
    from tests.argilla_review import submit
    from tests.test_annotate_argilla import LABELS, ag_news_slice, client_for, dataset_of, label_args, write_jsonl

    tmp = tmp_path_factory.mktemp("suspects")
    cache = tmp / "cache"
    rows = ag_news_slice(data_dir, 5000, 160)
    result = _run(argilla_stack, cache, "push", str(write_jsonl(tmp / "ag160.jsonl", rows)), *label_args(),
                  "--dataset", "suspects", "--service-url", embedding_service.url)
    assert result.returncode == 0, result.stderr
    gold = {record_id(r["text"]): r["gold"] for r in rows}
    chosen = sorted(gold)[:120]
    wrong = set(chosen[::10])  # 12 records
    decisions = {rid: (LABELS[(LABELS.index(gold[rid]) + 1 + i % 3) % 4] if rid in wrong else gold[rid])
                 for i, rid in enumerate(chosen)}
    assert submit(dataset_of(argilla_stack, "suspects"), decisions, client_for(argilla_stack).me.id) == 120
    return {"cache": cache, "tmp": tmp, "gold": gold, "decisions": decisions, "wrong": wrong}


@pytest.mark.argilla
def test_dry_run_scores_and_writes_nothing(reviewed_dataset, argilla_stack):
    before = _state(argilla_stack, "suspects")
    out = reviewed_dataset["tmp"] / "dry.json"
    result = _run(argilla_stack, reviewed_dataset["cache"], "suspects", "--dataset", "suspects", "--dry-run",
                  "--summary-json", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["submitted"] == 120 and summary["records"] == 160 and summary["method"] == "confident-learning"
    assert summary["written"] == 0 and not summary["property_added"] and summary["vectors_from"] == {"cache": 160}
    assert "nothing written (--dry-run)" in result.stdout
    assert _state(argilla_stack, "suspects") == before
    from tests.test_annotate_argilla import dataset_of

    assert "suspect" not in {m.name for m in dataset_of(argilla_stack, "suspects").settings.metadata}


@pytest.mark.argilla
def test_suspects_writes_the_score_on_submitted_records_only_and_is_idempotent(reviewed_dataset, argilla_stack):
    from tests.test_annotate_argilla import dataset_of

    before = _state(argilla_stack, "suspects")
    out = reviewed_dataset["tmp"] / "run1.json"
    result = _run(argilla_stack, reviewed_dataset["cache"], "suspects", "--dataset", "suspects", "--summary-json",
                  str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["property_added"] and summary["written"] == 120 and summary["cleared"] == 0
    dataset = dataset_of(argilla_stack, "suspects")
    prop = next(m for m in dataset.settings.metadata if m.name == "suspect")
    assert type(prop).__name__ == "FloatMetadataProperty"
    link = f"{argilla_stack.url}/dataset/{dataset.id}/annotation-mode?status=submitted&sort=metadata.suspect.desc"
    assert summary["link"] == link and link in result.stdout
    after = _state(argilla_stack, "suspects")
    decisions, wrong = reviewed_dataset["decisions"], reviewed_dataset["wrong"]
    assert set(after) == set(before)
    for rid, (value, score, agent, answers, meta) in after.items():
        assert (value, score, agent, answers) == before[rid][:4]  # suggestions and responses untouched
        assert {k: v for k, v in meta.items() if k != "suspect"} == before[rid][4]  # other metadata kept
        assert ("suspect" in meta) == (rid in decisions)
    scores = {rid: after[rid][4]["suspect"] for rid in decisions}
    assert all(0 <= s <= 1 for s in scores.values())
    flipped = np.array([scores[rid] for rid in wrong])
    right = np.array([scores[rid] for rid in decisions if rid not in wrong])
    assert flipped.mean() > right.mean() + 0.3, (flipped, right)
    top = sorted(scores, key=scores.get, reverse=True)[:12]
    assert len(set(top) & wrong) >= 6  # at least half the top 12 are the flipped records (chance: 1.2)
    assert [t["id"] for t in summary["top"]] == top[:10]
    assert sum(s["reviewed"] for s in summary["per_label"].values()) == 120
    assert list(summary["per_annotator"]) == ["owner"] and summary["per_annotator"]["owner"]["reviewed"] == 120
    assert summary["flagged"] == sum(s["flagged"] for s in summary["per_label"].values()) > 0
    assert "per label" in result.stdout and "most suspect" in result.stdout

    again = _run(argilla_stack, reviewed_dataset["cache"], "suspects", "--dataset", "suspects", "--summary-json",
                 str(reviewed_dataset["tmp"] / "run2.json"))
    assert again.returncode == 0, again.stderr
    second = json.loads((reviewed_dataset["tmp"] / "run2.json").read_text())
    assert second["written"] == 0 and not second["property_added"]
    assert _state(argilla_stack, "suspects") == after


@pytest.mark.argilla
def test_ui_link_opens_the_most_suspect_submitted_record(reviewed_dataset, argilla_stack, tmp_path):
    """Headless Chromium signs in and opens the printed link (status=submitted, sort=metadata.suspect.desc)."""
    from tests import argilla_ui
    from tests.test_annotate_argilla import dataset_of

    reason = argilla_ui.missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"UI check cannot run in CI: {reason}")
        pytest.skip(reason)
    dataset = dataset_of(argilla_stack, "suspects")
    records = [r for r in dataset.records(with_responses=False) if r.metadata.get("suspect") is not None]
    if not records:
        pytest.skip("needs the scores written by the test before")
    most = max(records, key=lambda r: r.metadata["suspect"])
    link = f"{argilla_stack.url}/dataset/{dataset.id}/annotation-mode?status=submitted&sort=metadata.suspect.desc"
    text = argilla_ui.screenshot(argilla_stack.url, argilla_stack.username, argilla_stack.password, link,
                                 tmp_path / "suspects.png")
    assert most.fields["text"].split("\n")[0][:80] in text
    assert "Submitted" in text


@pytest.mark.argilla
def test_several_annotators_use_crowdlab_and_rate_each_annotator(reviewed_dataset, argilla_stack):
    """A second Argilla user answers 40 of the submitted records (8 of them wrongly): CROWDLAB scores the records
    and both annotators."""
    import argilla as rg

    from tests.argilla_review import submit
    from tests.test_annotate_argilla import LABELS, client_for, dataset_of

    client = client_for(argilla_stack)
    user = client.users("reviewer2")
    if user is None:
        user = rg.User(username="reviewer2", password="reviewer2-password", role="annotator", client=client).create()
        client.workspaces(argilla_stack.workspace).add_user(user)
    gold, decisions = reviewed_dataset["gold"], reviewed_dataset["decisions"]
    again = sorted(decisions)[1::3][:40]
    answers = {rid: (LABELS[(LABELS.index(gold[rid]) + 2) % 4] if i % 5 == 0 else gold[rid])
               for i, rid in enumerate(again)}
    assert submit(dataset_of(argilla_stack, "suspects"), answers, user.id) == 40
    out = reviewed_dataset["tmp"] / "multi.json"
    result = _run(argilla_stack, reviewed_dataset["cache"], "suspects", "--dataset", "suspects", "--summary-json",
                  str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["method"] == "crowdlab" and summary["submitted"] == 120
    people = summary["per_annotator"]
    assert set(people) == {"owner", "reviewer2"}
    assert all(0 <= s["annotator_quality"] <= 1 for s in people.values())
    assert people["reviewer2"]["labelled"] == 40 and people["owner"]["labelled"] == 120
    assert "quality, agreement with consensus" in result.stdout


@pytest.mark.argilla
def test_bad_input_exits_2_with_one_line(argilla_stack, embedding_service, data_dir, tmp_path):
    from annotate.dataset import record_id
    from tests.argilla_review import submit
    from tests.test_annotate_argilla import (
        ag_news_slice,
        client_for,
        dataset_of,
        label_args,
        one_error_line,
        write_jsonl,
    )

    cache = tmp_path / "cache"
    result = _run(argilla_stack, cache, "suspects", "--dataset", "nope")
    assert result.returncode == 2 and "dataset 'nope' not found" in one_error_line(result)
    rows = ag_news_slice(data_dir, 6000, 30)
    pushed = _run(argilla_stack, cache, "push", str(write_jsonl(tmp_path / "ag30.jsonl", rows)), *label_args(),
                  "--dataset", "suspects-few", "--service-url", embedding_service.url)
    assert pushed.returncode == 0, pushed.stderr
    result = _run(argilla_stack, cache, "suspects", "--dataset", "suspects-few")
    assert result.returncode == 2 and "no submitted record" in one_error_line(result)
    dataset = dataset_of(argilla_stack, "suspects-few")
    ids = sorted(record_id(r["text"]) for r in rows)[:5]
    gold = {record_id(r["text"]): r["gold"] for r in rows}
    assert submit(dataset, {rid: gold[rid] for rid in ids}, client_for(argilla_stack).me.id) == 5
    result = _run(argilla_stack, cache, "suspects", "--dataset", "suspects-few")
    assert result.returncode == 2 and f"needs at least {MIN_REVIEWS}" in one_error_line(result)
    assert "suspect" not in {m.name for m in dataset_of(argilla_stack, "suspects-few").settings.metadata}
