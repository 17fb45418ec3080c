"""annotate/accept.py and ``python -m annotate accept`` against a real Argilla 2.8 stack, on real AG News texts
(World and Sports) scored and embedded by the packaged sentence encoder in-process (embedding zero-shot).

Nothing is mocked. The stand-in reviewers submit the gold labels (tests/argilla_review.py). Three records get a
planted suggestion (a World text suggested as Sports at score 0.99, out of reach of the certification sample): the
certified region accepts them, and the refresh, whose head fits the teacher and the reviews, disagrees and revokes
them. The kill test stops ``--apply`` with ``ANNOTATE_ACCEPT_PAUSE_AFTER_BATCHES`` (it holds after two batches) and
SIGKILLs it there, so the interruption lands at the same place on every run.

The first tests (no marker) check :func:`annotate.accept.assess` on hand-made record states: which records form the
lot, what is flagged, what a changed suggestion does to the sample.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from annotate.accept import RecordState, assess, certify_priority, suggestion_basis
from annotate.dataset import ACCEPT_METADATA, ACCEPTED_BY, AUDIT, CERTIFY, CERTIFY_BASIS, record_id, teacher_key

from .conftest import REPO

LABELS = ["World", "Sports"]
TARGET = "0.85"


# --- assess() on hand-made records (no Argilla) ------------------------------------------------------------------
def _states(n=1000, seed=0, wrong=0.02):
    """``n`` pending records, most scoring near 1, suggestions right with probability rising with the score (about
    ``wrong`` wrong at the top); returns the states and the gold labels."""
    rng = np.random.default_rng(seed)
    ids = [f"r{i:04d}" for i in range(n)]
    scores = 1.0 - 0.5 * rng.beta(1.0, 6.0, n)
    suggested = rng.integers(0, 2, n)
    right = rng.random(n) > wrong + 0.6 * (1 - scores)
    gold = np.where(right, suggested, 1 - suggested)
    states = [RecordState(uuid=f"u{i}", id=rid, metadata={AUDIT: 0}, value=LABELS[suggested[i]],
                          score=float(scores[i]), agent="enc:adaptive-head:abc") for i, rid in enumerate(ids)]
    return states, {rid: LABELS[g] for rid, g in zip(ids, gold)}


def _review_until_done(states, gold, target=0.9, rounds=30):
    by_id = {s.id: s for s in states}
    for _ in range(rounds):
        found = assess(states, LABELS, target=target)
        if not found.flag:
            return found
        for rid in found.flag:
            s = by_id[rid]
            s.metadata.update({CERTIFY: 1, CERTIFY_BASIS: found.basis})
            s.human_status, s.human_value = "submitted", gold[rid]
    raise AssertionError("the certification did not settle")


def test_assess_certifies_from_the_flagged_sample_and_accepts_only_pending_records():
    states, gold = _states()
    first = assess(states, LABELS, target=0.9)
    assert first.flag and not first.accept and not first.unflag  # nothing reviewed: only a sample to review
    priority = dict(zip([s.id for s in states], certify_priority([s.id for s in states])))
    rates = {r.label: r.rate for r in first.rows if r.rate is not None}
    assert all(priority[rid] < max(rates.values()) for rid in first.flag)  # flagged = drawn by the fixed hash
    done = _review_until_done(states, gold)
    certified = [r for r in done.rows if r.status == "certified"]
    assert certified and done.accept
    by_id = {s.id: s for s in states}
    for rid, threshold in done.accept.items():
        s = by_id[rid]
        assert s.human_status is None and s.score >= threshold
    for r in certified:  # the table's figures are the passing test's counts and their Clopper-Pearson bound
        assert r.lower >= 0.9 and r.estimate == r.correct / r.reviews and r.accepted > 0
    precision = np.mean([gold[rid] == by_id[rid].value for rid in done.accept])
    assert precision >= 0.85  # promised 0.9 at 95% confidence; measured against the gold labels


def test_accepted_records_stay_in_the_lot_so_a_rerun_repeats_the_plan():
    states, gold = _states(seed=1)
    done = _review_until_done(states, gold)
    by_id = {s.id: s for s in states}
    half = sorted(done.accept)[: len(done.accept) // 2]
    for rid in half:  # an --apply killed halfway
        by_id[rid].auto_response, by_id[rid].auto_value, by_id[rid].auto_user = f"resp-{rid}", by_id[rid].value, "bot"
    again = assess(states, LABELS, target=0.9)
    assert set(again.accept) == set(done.accept) - set(half) and again.already == len(half)
    assert [r.threshold for r in again.rows] == [r.threshold for r in done.rows] and not again.flag


def test_a_changed_suggestion_voids_the_sample_and_audit_records_stay_out():
    states, gold = _states(seed=2)
    done = _review_until_done(states, gold)
    sampled = [s for s in states if s.human_status is not None]
    assert all(s.metadata[CERTIFY_BASIS] == done.basis for s in sampled)
    pending = next(s for s in states if s.human_status is None and s.id not in done.accept)
    pending.score = min(1.0, pending.score + 0.01)  # a refresh rewrote one suggestion
    assert suggestion_basis(states) != done.basis
    redo = assess(states, LABELS, target=0.9)
    # the old sample's reviews leave the lot (ordinary reviews now): a new sample is drawn, nothing accepted yet
    assert not redo.accept and redo.flag and not set(redo.flag) & {s.id for s in sampled}
    audit = next(s for s in states if s.human_status is None and s.id != pending.id)
    audit.metadata[AUDIT] = 1
    assert audit.id not in assess(states, LABELS, target=0.9).flag + list(redo.accept)


def test_discarded_sample_records_count_as_wrong_and_a_refused_target_is_a_value_error():
    states, gold = _states(seed=3)
    by_id = {s.id: s for s in states}
    found = assess(states, LABELS, target=0.9)
    for rid in found.flag:
        s = by_id[rid]
        s.metadata.update({CERTIFY: 1, CERTIFY_BASIS: found.basis})
        s.human_status = "discarded"  # nothing fits: every sampled suggestion is wrong
    again = assess(states, LABELS, target=0.9)
    assert not again.accept and all(r.status in ("failed", "no plan") for r in again.rows[:-1])
    assert all(t["correct"] == 0 for r in again.rows for t in r.tests)
    with pytest.raises(ValueError, match="between 0 and 1"):
        assess(states, LABELS, target=1.5)


# --- against Argilla ---------------------------------------------------------------------------------------------
def _rows(data_dir: Path, count: int = 300, start: int = 3000) -> list[dict]:
    rows = []
    with (data_dir / "classification" / "ag_news" / "test.jsonl").open(encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if i < start:
                continue
            row = json.loads(line)
            if row["label"] in LABELS:
                rows.append({"text": f"{row['title']}. {row['description']}".strip(), "gold": row["label"]})
            if len(rows) >= count:
                break
    return rows


@pytest.fixture(scope="module")
def scored(data_dir):
    """The texts with their zero-shot scores and embeddings (packaged MiniLM, embedding method, in-process)."""
    from pool.scorers import LocalScorer

    rows = _rows(data_dir)
    scorer = LocalScorer(LABELS, "This text is about {}.", model="default", engine="onnxruntime", method="embedding",
                         batch_size=128)
    try:
        texts = [r["text"] for r in rows]
        scores, embeddings = scorer.score(texts), scorer.embed(texts)
    finally:
        scorer.close()
    return {"rows": rows, "ids": [record_id(r["text"]) for r in rows], "scores": scores, "embeddings": embeddings,
            "gold": {record_id(r["text"]): r["gold"] for r in rows}}


def _client(stack):
    from annotate.client import connect

    return connect(stack.url, stack.api_key)


def _create(stack, name: str, scored: dict, *, planted=(), vectors: bool = True):
    """A pre-annotation dataset as ``push`` lays it out (vector field, audit flags, teacher scores). The suggestions
    carry the zero-shot scores' confidence (their top score) on a label that is the gold one for 97% of the records
    (a seeded 3% get the other label), so what the certification finds does not hang on the encoder's last bits:
    the packaged encoder's int8 kernels differ between CPUs (AVX2 against AVX-512 VNNI), and the zero-shot argmax
    itself certified on one and not the other. ``planted`` records are suggested as Sports at 0.99."""
    import argilla as rg

    from annotate.dataset import audit_flags, build_records, build_settings

    client = _client(stack)
    dataset = rg.Dataset(name=name, workspace=stack.workspace, client=client,
                         settings=build_settings(LABELS, False, "accept tests", vector_dim=384 if vectors else None,
                                                 audit=True))
    dataset.create()
    ids, teacher = scored["ids"], scored["scores"]
    gold = np.array([LABELS.index(scored["gold"][rid]) for rid in ids])
    chosen = np.where(np.random.default_rng(11).random(len(ids)) < 0.03, 1 - gold, gold)
    top = teacher.max(axis=1)
    shown = np.where(np.arange(2)[None, :] == chosen[:, None], top[:, None], 1.0 - top[:, None])
    shown[[i for i, rid in enumerate(ids) if rid in planted]] = [0.01, 0.99]  # the suggestion; the teacher stays
    records = build_records(ids, [r["text"] for r in scored["rows"]], shown, LABELS, False,
                            "packaged:all-MiniLM-L6-v2:onnxruntime:embedding",
                            vectors=scored["embeddings"] if vectors else None,
                            extra_metadata={AUDIT: audit_flags(ids, 0.05),
                                            **{teacher_key(j): [float(x) for x in teacher[:, j]] for j in range(2)}})
    dataset.records.log(records)
    return dataset


def _submit(stack, dataset, decisions: dict, status: str | None = None) -> None:
    import argilla as rg

    from tests.argilla_review import submit

    client = _client(stack)
    if status != "draft":
        submit(dataset, decisions, client.me.id)
        return
    records = [r for r in dataset.records(with_responses=True) if str(r.id) in decisions]
    for record in records:
        record.responses.add(rg.Response(question_name="label", value=decisions[str(record.id)], user_id=client.me.id,
                                         status="draft"))
    dataset.records.log(records)


def state_of(stack, name: str) -> dict:
    """``{external id: (metadata, sorted responses (user, status, value), suggestions, record status)}`` from
    Argilla's database (not the search index)."""
    from annotate.client import find_dataset

    client = _client(stack)
    dataset = find_dataset(client, name, stack.workspace)
    out, offset = {}, 0
    while True:
        page = client.api.http_client.get(f"/api/v1/datasets/{dataset.id}/records", params={
            "include": ["responses", "suggestions"], "offset": offset, "limit": 1000}).json()
        for item in page["items"]:
            responses = sorted((r["user_id"], r["status"], json.dumps(r["values"], sort_keys=True))
                               for r in item["responses"])
            out[item["external_id"]] = (item["metadata"], responses, [(s["value"], s["score"], s["agent"])
                                                                      for s in item["suggestions"]], item["status"])
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return out


def cli(stack, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, **stack.env(), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "annotate", *args], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def certified(argilla_stack, scored, tmp_path_factory):
    """Dataset ``accept``: 20 lowest-score records reviewed in the loop (gold), 2 discarded, 1 draft on a
    top-score record; then ``accept`` flags the certification sample and the stand-in reviewers review what it
    flags, band by band, until it asks for nothing more."""
    from annotate.accept import auto_user
    from annotate.accept import run as run_accept
    from annotate.dataset import audit_flags

    ids, scores, gold = scored["ids"], scored["scores"], scored["gold"]
    priority = dict(zip(ids, certify_priority(ids)))
    top = scores.max(axis=1)
    order = np.argsort(top)
    # planted: World texts the teacher is sure about, never in a sample (priority above every rate, <= 0.5)
    audit = dict(zip(ids, audit_flags(ids, 0.05)))
    free = {rid for rid in ids if priority[rid] > 0.6 and not audit[rid]}
    world = [ids[i] for i in order[::-1] if gold[ids[i]] == "World" and scores[i].argmax() == 0 and ids[i] in free]
    planted = set(world[:3])
    dataset = _create(argilla_stack, "accept", scored, planted=planted)
    loop = [ids[i] for i in order[:22]]
    _submit(argilla_stack, dataset, {rid: gold[rid] for rid in loop[:20]})
    _submit(argilla_stack, dataset, {rid: None for rid in loop[20:22]})  # discarded
    draft = next(ids[i] for i in order[::-1] if ids[i] not in planted and ids[i] in free)
    _submit(argilla_stack, dataset, {draft: LABELS[int(scores[ids.index(draft)].argmax())]}, status="draft")
    client = _client(argilla_stack)
    first = cli(argilla_stack, "accept", "--dataset", "accept", "--precision", TARGET)
    assert first.returncode == 0, first.stderr
    rounds = 0
    while True:
        flagged = [str(r.id) for r in dataset.records(with_responses=True)
                   if r.metadata.get(CERTIFY) == 1 and not list(r.responses)]
        if not flagged:
            break
        rounds += 1
        assert rounds <= 15, "the certification did not settle"
        _submit(argilla_stack, dataset, {rid: gold[rid] for rid in flagged})
        run_accept(client, "accept", argilla_stack.workspace, argilla_stack.url, target=float(TARGET), progress=False)
    summary = tmp_path_factory.mktemp("accept") / "dry.json"
    dry = cli(argilla_stack, "accept", "--dataset", "accept", "--precision", TARGET, "--summary-json", str(summary))
    assert dry.returncode == 0, dry.stderr
    assert auto_user(client, argilla_stack.workspace) is None  # a dry run creates no user and writes no response
    return {"dataset": dataset, "planted": planted, "loop": loop, "draft": draft, "first": first.stdout,
            "dry": dry.stdout, "summary": json.loads(summary.read_text()), "rounds": rounds}


@pytest.mark.argilla
def test_apply_killed_and_rerun_accepts_each_record_once_never_a_human_one_and_undo_restores_exactly(
        certified, argilla_stack, tmp_path):
    first, dry = certified["first"], certified["dry"]
    assert "metadata=certify.ge1.le1" in first and "review" in first  # the sample to review, with its deep link
    summary = certified["summary"]
    sports = next(r for r in summary["rows"] if r["label"] == "Sports")
    assert sports["status"] == "certified" and sports["lower"] >= float(TARGET) and sports["accepted"] > 10
    assert summary["to_accept"] == sum(r["accepted"] or 0 for r in summary["rows"][:-1]) and summary["written"] == 0
    assert f"dry run: {summary['to_accept']} pending records would be accepted" in dry
    before = state_of(argilla_stack, "accept")
    humans = {rid for rid, (_, responses, *_) in before.items() if responses}
    assert certified["draft"] in humans and set(certified["loop"]) <= humans

    # killed after two batches of 5 were acknowledged (it holds there until the SIGKILL)
    log = tmp_path / "apply.err"
    env = {**os.environ, **argilla_stack.env(), "PYTHONUNBUFFERED": "1", "ANNOTATE_ACCEPT_PAUSE_AFTER_BATCHES": "2"}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "annotate", "accept", "--dataset", "accept", "--precision",
                                 TARGET, "--apply", "--batch-size", "5"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 300
            while "paused after 2 batches" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.5)
            assert "paused after 2 batches" in log.read_text(), log.read_text()
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    middle = state_of(argilla_stack, "accept")
    accepted_now = {rid for rid, (meta, *_) in middle.items() if meta.get(ACCEPTED_BY)}
    assert len(accepted_now) == 10

    result = cli(argilla_stack, "accept", "--dataset", "accept", "--precision", TARGET, "--apply",
                 "--summary-json", str(tmp_path / "apply.json"))
    assert result.returncode == 0, result.stderr
    applied = json.loads((tmp_path / "apply.json").read_text())
    assert applied["already"] == 10 and applied["written"] == summary["to_accept"] - 10
    after = state_of(argilla_stack, "accept")
    auto = {rid for rid, (meta, *_) in after.items() if meta.get(ACCEPTED_BY)}
    assert len(auto) == summary["to_accept"] and accepted_now <= auto and certified["planted"] <= auto
    for rid, (meta, responses, suggestions, _) in after.items():
        if rid in humans:
            assert after[rid] == before[rid]  # a record with a human response is never written
        elif rid in auto:
            assert len(responses) == 1 and responses[0][1] == "submitted"  # one response, the suggestion's
            assert json.loads(responses[0][2]) == {"label": {"value": suggestions[0][0]}}
            assert meta[ACCEPTED_BY] == "auto-accept" and suggestions[0][1] >= meta["accept_threshold"]
            assert meta["accept_revision"] == "packaged:all-MiniLM-L6-v2:onnxruntime:embedding"
            assert {k: v for k, v in meta.items() if k not in ACCEPT_METADATA} == before[rid][0]
        else:
            assert after[rid] == before[rid]
    again = cli(argilla_stack, "accept", "--dataset", "accept", "--precision", TARGET, "--apply",
                "--summary-json", str(tmp_path / "again.json"))
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again.json").read_text())["written"] == 0  # idempotent
    assert state_of(argilla_stack, "accept") == after

    undo = cli(argilla_stack, "accept", "--dataset", "accept", "--undo")
    assert undo.returncode == 0, undo.stderr
    assert f"undone: {len(auto)} auto-accepted records" in undo.stdout
    assert state_of(argilla_stack, "accept") == before  # every record's responses, metadata and suggestion


@pytest.mark.argilla
def test_export_marks_the_source_and_a_refresh_that_disagrees_revokes(certified, argilla_stack, tmp_path):
    from train.student_data import read_exports

    applied = cli(argilla_stack, "accept", "--dataset", "accept", "--precision", TARGET, "--apply",
                  "--summary-json", str(tmp_path / "apply.json"))
    assert applied.returncode == 0, applied.stderr
    summary = json.loads((tmp_path / "apply.json").read_text())
    auto = summary["written"] + summary["already"]
    assert auto > 10
    before = state_of(argilla_stack, "accept")
    humans_submitted = sum(1 for _, responses, *_ in before.values()
                           if any(r[1] == "submitted" and r[0] != _auto_id(argilla_stack) for r in responses))

    result = cli(argilla_stack, "export", str(tmp_path / "all.jsonl"), "--dataset", "accept")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    sources = [r["source"] for r in rows]
    assert sources.count("auto-accept") == auto and sources.count("human") == humans_submitted
    assert all(r["annotator"] == "auto-accept" and r["label"] == r["suggestion"] for r in rows
               if r["source"] == "auto-accept")
    result = cli(argilla_stack, "export", str(tmp_path / "humans.jsonl"), "--dataset", "accept", "--humans-only")
    assert result.returncode == 0, result.stderr
    humans = [json.loads(line) for line in (tmp_path / "humans.jsonl").read_text().splitlines()]
    assert len(humans) == humans_submitted and {r["source"] for r in humans} == {"human"}
    assert len(read_exports([tmp_path / "all.jsonl"]).examples) == len(rows)
    assert len(read_exports([tmp_path / "all.jsonl"], humans_only=True).examples) == humans_submitted

    # the refresh fits the head on the human reviews only; it disagrees with the planted acceptances
    cache = tmp_path / "cache"
    refreshed = cli(argilla_stack, "refresh", "--dataset", "accept", "--summary-json", str(tmp_path / "refresh.json"),
                    env={"ANNOTATE_CACHE_DIR": str(cache)})
    assert refreshed.returncode == 0, refreshed.stderr
    report = json.loads((tmp_path / "refresh.json").read_text())
    assert report["submitted"] == humans_submitted  # the auto-accepted responses are not reviews
    revoked_line = next(w for w in report["warnings"] if w.startswith("revoked "))
    revoked = int(revoked_line.split()[1])
    assert revoked_line in refreshed.stderr and revoked >= len(certified["planted"])
    after = state_of(argilla_stack, "accept")
    still = {rid for rid, (meta, *_) in after.items() if meta.get(ACCEPTED_BY)}
    gone = {rid for rid, (meta, *_) in before.items() if meta.get(ACCEPTED_BY)} - still
    assert len(gone) == revoked and certified["planted"] <= gone
    for rid in gone:  # pending again, with the head's new suggestion
        meta, responses, suggestions, _ = after[rid]
        assert responses == [] and not set(ACCEPT_METADATA) & set(meta)
        assert suggestions[0][0] != before[rid][2][0][0] and suggestions[0][2] != before[rid][2][0][2]
    for rid in still:  # kept as they were
        assert after[rid] == before[rid]
    assert report["pending"] == sum(1 for _, responses, *_ in after.values() if not responses)


def _auto_id(stack) -> str:
    from annotate.accept import auto_user

    return str(auto_user(_client(stack), stack.workspace).id)


@pytest.mark.argilla
def test_bad_input_exits_2_with_one_line_and_writes_nothing(argilla_stack, scored):
    line = one_error_line(cli(argilla_stack, "accept", "--dataset", "accept", "--precision", "1.5"))
    assert "--precision 1.5" in line and "between 0 and 1" in line
    assert "--confidence 0" in one_error_line(cli(argilla_stack, "accept", "--dataset", "accept", "--confidence", "0"))
    assert "not both" in one_error_line(cli(argilla_stack, "accept", "--dataset", "accept", "--apply", "--undo"))
    assert "not found" in one_error_line(cli(argilla_stack, "accept", "--dataset", "nope"))

    _create(argilla_stack, "accept-novectors", scored, vectors=False)
    before = state_of(argilla_stack, "accept-novectors")
    line = one_error_line(cli(argilla_stack, "accept", "--dataset", "accept-novectors", "--apply"))
    assert "has no vector field" in line
    assert state_of(argilla_stack, "accept-novectors") == before

    _create(argilla_stack, "accept-fresh", scored)
    before = state_of(argilla_stack, "accept-fresh")
    line = one_error_line(cli(argilla_stack, "accept", "--dataset", "accept-fresh", "--precision", TARGET, "--apply"))
    assert "no reviews of the certification sample" in line
    assert state_of(argilla_stack, "accept-fresh") == before  # not even a flag
