"""Adaptive push and ``python -m annotate refresh`` against a real Argilla 2.8 stack and the real service over HTTP
(embedding method and POST /embed), on real AG News texts. Nothing is mocked; the one injected fault is
``ANNOTATE_REFRESH_FAIL_AFTER_BATCHES``, which ends the refresh process with ``os._exit`` (as SIGKILL would) right
after its first update batch was acknowledged, so the interruption lands at the same place on every run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annotate.dataset import AUDIT, VECTOR, record_id, teacher_key

from .conftest import REPO, LiveServer
from .test_annotate_argilla import (
    LABELS,
    ag_news_slice,
    client_for,
    dataset_of,
    label_args,
    one_error_line,
    write_jsonl,
)

pytestmark = pytest.mark.argilla


@pytest.fixture(scope="module")
def embedding_service(cache_dir):
    """The real service with the packaged sentence encoder (embedding method, POST /embed)."""
    from service.app import create_app
    from service.config import Settings

    settings = Settings(model="none", embedding_model="default", method="embedding", engine="onnxruntime",
                        cache_dir=cache_dir)
    with LiveServer(create_app(settings)) as live:
        assert live.wait_ready(300).status_code == 200
        yield live


@pytest.fixture(scope="module")
def annotate_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("annotate-cache")


def run(stack, cache: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, **stack.env(), "PYTHONUNBUFFERED": "1", "ANNOTATE_CACHE_DIR": str(cache), **(env or {})}
    return subprocess.run([sys.executable, "-m", "annotate", *args], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=timeout)


def snapshot(stack, name: str) -> dict:
    """``{id: (value, score, agent, suggestion count, has vector, metadata)}`` of every record."""
    dataset = dataset_of(stack, name)
    out = {}
    for record in dataset.records(with_suggestions=True, with_responses=False, with_vectors=[VECTOR]):
        suggestions = list(record.suggestions)
        s = suggestions[0]
        out[str(record.id)] = (s.value, s.score, s.agent, len(suggestions), bool(record.vectors.get(VECTOR)),
                               dict(record.metadata))
    return out


@pytest.fixture(scope="module")
def adapted(argilla_stack, embedding_service, data_dir, annotate_cache, tmp_path_factory):
    """80 AG News test texts pushed with adaptation; 30 submitted with the gold label, 5 discarded."""
    from tests.argilla_review import submit

    tmp = tmp_path_factory.mktemp("adaptive")
    rows = ag_news_slice(data_dir, 2000, 80)
    source = write_jsonl(tmp / "ag80.jsonl", rows)
    requests_before = service_requests(embedding_service.url)
    result = run(argilla_stack, annotate_cache, "push", str(source), *label_args(), "--dataset", "adaptive",
                 "--service-url", embedding_service.url, "--summary-json", str(tmp / "push.json"))
    assert result.returncode == 0, result.stderr
    requests = {k: v - requests_before.get(k, 0) for k, v in service_requests(embedding_service.url).items()}
    summary = json.loads((tmp / "push.json").read_text())
    before = snapshot(argilla_stack, "adaptive")
    gold = {record_id(r["text"]): r["gold"] for r in rows}
    lowest = sorted(before, key=lambda rid: before[rid][1])
    chosen = lowest[:15] + [rid for rid in sorted(gold) if rid not in lowest[:15]]
    submitted = {rid: gold[rid] for rid in chosen[:30]}
    discarded = {rid: None for rid in chosen[30:35]}
    dataset = dataset_of(argilla_stack, "adaptive")
    assert submit(dataset, {**submitted, **discarded}, client_for(argilla_stack).me.id) == 35
    return {"rows": rows, "summary": summary, "before": before, "submitted": submitted, "discarded": discarded,
            "tmp": tmp, "requests": requests}


def service_requests(url: str) -> dict[str, float]:
    """``{endpoint: requests answered}`` of the live service, from its own Prometheus counter."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == "zsc_requests_total":
                counts[sample.labels["endpoint"]] = counts.get(sample.labels["endpoint"], 0) + sample.value
    return counts


def test_adaptive_push_writes_vectors_audit_teacher_scores_and_the_cache(adapted, annotate_cache, argilla_stack,
                                                                         embedding_service):
    summary, before = adapted["summary"], adapted["before"]
    assert summary["pushed"] == 80 and summary["embedded"] == 80 and summary["failed"] == 0
    # one encoder pass a text: scores and embeddings from one POST /zero-shot a chunk (max_texts 64: 2), no /embed
    assert adapted["requests"].get("/zero-shot") == 2 and adapted["requests"].get("/embed", 0) == 0
    assert 0 <= summary["head_changed_label"] <= summary["head_changed"] <= 80
    assert summary["head"]["pool_size"] == 80 and summary["fit_seconds"] is not None
    assert set(before) == {record_id(r["text"]) for r in adapted["rows"]}
    audit = [meta[AUDIT] for *_, meta in before.values()]
    assert set(audit) <= {0, 1} and 0 < sum(audit) < 15  # ~5% of 80, from the id hash
    for value, score, agent, count, has_vector, meta in before.values():
        assert count == 1 and has_vector and agent == summary["agent"]
        teacher = np.array([meta[teacher_key(i)] for i in range(len(LABELS))])
        assert teacher.sum() == pytest.approx(1, abs=1e-5)  # the zero-shot scores, whatever suggests
        assert meta["confidence"] == pytest.approx(score, abs=1e-5)
    if summary["head"]["mode"] == "zero-shot":  # the guard kept the zero-shot scores: suggestion = teacher argmax
        assert all(v == LABELS[int(np.argmax([m[teacher_key(i)] for i in range(4)]))]
                   for v, *_, m in before.values())
    else:
        assert ":adaptive-head:" in summary["agent"] and Path(summary["head_dir"], "head.json").is_file()
    from annotate.cache import DatasetCache

    pool = DatasetCache(annotate_cache, argilla_stack.url, argilla_stack.workspace, "adaptive").load_pool()
    assert sorted(pool.ids) == sorted(before) and pool.embeddings.shape == (80, 384)
    # pushing again scores nothing (content-hash ids, cache)
    again = run(argilla_stack, annotate_cache, "push", str(adapted["tmp"] / "ag80.jsonl"), *label_args(),
                "--dataset", "adaptive", "--service-url", embedding_service.url, "--summary-json",
                str(adapted["tmp"] / "again.json"))
    assert again.returncode == 0, again.stderr
    again = json.loads((adapted["tmp"] / "again.json").read_text())
    assert again["pushed"] == 0 and again["skipped_existing"] == 80 and again["scoring_seconds"] == 0



def test_adaptive_push_streams_after_the_first_fit_rows_and_ends_with_the_whole_pool_heads_labels(
        argilla_stack, embedding_service, annotate_cache, data_dir, tmp_path):
    """--fit-rows 16 on 60 texts sorted by their gold label (the worst case: the first records are one class): the
    head is fitted on the first 16, the other 44 are scored and upserted with its suggestions, then the refit on the
    whole pool rewrites what it changes, so every record ends with the whole-pool head's label (what an adapted push
    wrote before streaming), and its score within 0.1 of that head's."""
    from annotate.adaptive import adapt
    from annotate.cache import DatasetCache

    rows = sorted(ag_news_slice(data_dir, 3000, 60), key=lambda r: r["gold"])
    source = write_jsonl(tmp_path / "sorted60.jsonl", rows)
    result = run(argilla_stack, annotate_cache, "push", str(source), *label_args(), "--dataset", "streamed",
                 "--fit-rows", "16", "--batch-size", "8", "--service-url", embedding_service.url, "--summary-json",
                 str(tmp_path / "push.json"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "push.json").read_text())
    assert summary["pushed"] == 60 and summary["embedded"] == 60 and summary["failed"] == 0
    assert summary["head_fit_rows"] == 16 and summary["head"]["first_fit"]["pool_size"] == 16
    assert summary["head"]["pool_size"] == 60 and 0 <= summary["rewritten"] <= 60
    records = snapshot(argilla_stack, "streamed")
    assert set(records) == {record_id(r["text"]) for r in rows} and all(r[3] == 1 for r in records.values())
    pool = DatasetCache(annotate_cache, argilla_stack.url, argilla_stack.workspace, "streamed").load_pool()
    whole = adapt(pool.embeddings, pool.scores, LABELS, ids=pool.ids)
    for i, rid in enumerate(pool.ids):
        value, score, agent, *_ = records[rid]
        top = int(np.argmax(whole.scores[i]))
        assert value == LABELS[top], rid
        assert abs(score - whole.scores[i, top]) <= 0.1 + 1e-6
    assert sum(agent == summary["agent"] for _, _, agent, *_ in records.values()) >= summary["rewritten"]
    assert sum(r[1] == pytest.approx(whole.scores[pool.ids.index(rid)].max(), abs=1e-5)
               for rid, r in records.items()) >= summary["rewritten"]


def test_zero_shot_push_upserts_while_scoring_one_request_a_chunk(argilla_stack, embedding_service, annotate_cache,
                                                                 data_dir, tmp_path):
    """--no-adapt: batches of 16 scored and embedded in one request each, upserted by the Upserter while the next
    batch is scored; every record lands once with its zero-shot suggestion, its vector and the cached embedding."""
    from annotate.cache import DatasetCache
    from pool.scorers import HttpScorer

    rows = ag_news_slice(data_dir, 3000, 50)
    source = write_jsonl(tmp_path / "ag50.jsonl", rows)
    before = service_requests(embedding_service.url)
    result = run(argilla_stack, annotate_cache, "push", str(source), *label_args(), "--dataset", "zero-shot-overlap",
                 "--service-url", embedding_service.url, "--no-adapt", "--batch-size", "16", "--summary-json",
                 str(tmp_path / "push.json"))
    assert result.returncode == 0, result.stderr
    after = service_requests(embedding_service.url)
    assert after["/zero-shot"] - before.get("/zero-shot", 0) == 4 and after.get("/embed", 0) == before.get("/embed", 0)
    summary = json.loads((tmp_path / "push.json").read_text())
    assert summary["pushed"] == 50 and summary["embedded"] == 50 and summary["failed"] == 0
    records = snapshot(argilla_stack, "zero-shot-overlap")
    assert set(records) == {record_id(r["text"]) for r in rows}
    scorer = HttpScorer(embedding_service.url, LABELS, "This text is about {}.")
    texts = [r["text"] for r in rows]
    scores, vectors = scorer.score(texts), scorer.embed(texts)  # two separate calls, for reference
    scorer.close()
    for i, text in enumerate(texts):
        value, score, agent, count, has_vector, meta = records[record_id(text)]
        assert count == 1 and has_vector and agent == summary["agent"] and ":embedding" in agent
        assert value == LABELS[int(scores[i].argmax())] and score == pytest.approx(scores[i].max(), abs=1e-5)
    pool = DatasetCache(annotate_cache, argilla_stack.url, argilla_stack.workspace, "zero-shot-overlap").load_pool()
    order = [pool.ids.index(record_id(t)) for t in texts]
    np.testing.assert_allclose(pool.embeddings[order], vectors, atol=2e-3)  # the cache keeps float16


def test_refresh_updates_only_pending_resumes_after_a_kill_and_is_idempotent(adapted, argilla_stack, annotate_cache):
    reviewed = set(adapted["submitted"]) | set(adapted["discarded"])
    before = adapted["before"]
    out = adapted["tmp"]
    # killed right after the first update batch (20 records) was acknowledged
    # --min-score-change 0: every pending record whose score or agent changed is rewritten (the default, 0.02,
    # skips records whose label stays and whose score barely moved)
    killed = run(argilla_stack, annotate_cache, "refresh", "--dataset", "adaptive", "--batch-size", "20",
                 "--concurrency", "1", "--min-score-change", "0", env={"ANNOTATE_REFRESH_FAIL_AFTER_BATCHES": "1"})
    assert killed.returncode == 137, killed.stderr
    middle = snapshot(argilla_stack, "adaptive")
    moved = {rid for rid in middle if middle[rid][2] != before[rid][2] or middle[rid][:2] != before[rid][:2]}
    assert len(moved) == 20 and not moved & reviewed

    result = run(argilla_stack, annotate_cache, "refresh", "--dataset", "adaptive", "--batch-size", "20",
                 "--min-score-change", "0", "--summary-json", str(out / "refresh1.json"))
    assert result.returncode == 0, result.stderr
    first = json.loads((out / "refresh1.json").read_text())
    assert first["submitted"] == 30 and first["discarded"] == 5 and first["pending"] == 45
    # a head serves only where it measured better than zero-shot on the 30 reviews (never-worse); either way the
    # decision is measured and said
    assert first["cv_accuracy"] is not None and first["mode"]
    assert first["updated"] == first["changed"] == 45 - 20  # what the killed run had not written
    assert "cv accuracy" in result.stdout and "metadata.margin.asc" in result.stdout
    assert "metadata=audit.ge1.le1" in result.stdout and "audit estimate" in result.stdout
    after = snapshot(argilla_stack, "adaptive")
    assert set(after) == set(before)
    for rid, (value, score, agent, count, has_vector, meta) in after.items():
        assert count == 1 and has_vector  # one suggestion per record; the vector survives the update
        if rid in reviewed:
            assert after[rid] == before[rid]  # submitted and discarded records are never touched
        else:
            assert agent == first["agent"] and ":adaptive-head:" in agent
            assert meta["confidence"] == pytest.approx(score, abs=1e-5)
            assert [meta[teacher_key(i)] for i in range(4)] == [before[rid][5][teacher_key(i)] for i in range(4)]
            assert meta[AUDIT] == before[rid][5][AUDIT]
    from service.head import AdaptiveHead, is_head_dir

    assert is_head_dir(first["head_dir"]) and AdaptiveHead.load(first["head_dir"]).revision == first["revision"]

    # no new review: nothing changes, nothing is written
    again = run(argilla_stack, annotate_cache, "refresh", "--dataset", "adaptive", "--summary-json",
                str(out / "refresh2.json"))
    assert again.returncode == 0, again.stderr
    second = json.loads((out / "refresh2.json").read_text())
    assert second["changed"] == second["updated"] == 0 and second["revision"] == first["revision"]
    assert snapshot(argilla_stack, "adaptive") == after

    # the cache gone: vectors come from Argilla, same head, still nothing to write
    import shutil

    from annotate.cache import DatasetCache

    shutil.rmtree(DatasetCache(annotate_cache, argilla_stack.url, argilla_stack.workspace, "adaptive").root)
    third = run(argilla_stack, annotate_cache, "refresh", "--dataset", "adaptive", "--summary-json",
                str(out / "refresh3.json"))
    assert third.returncode == 0, third.stderr
    third = json.loads((out / "refresh3.json").read_text())
    assert third["vectors_from"] == {"cache": 0, "argilla": 80} and third["updated"] == 0


def test_refresh_bad_input_one_line_nothing_written(adapted, argilla_stack, annotate_cache, embedding_service,
                                                    data_dir, tmp_path):
    import argilla as rg

    from annotate.dataset import build_records, build_settings
    from tests.argilla_review import submit

    state = snapshot(argilla_stack, "adaptive")
    line = one_error_line(run(argilla_stack, annotate_cache, "refresh", "--dataset", "adaptive", "--label", "World",
                              "--label", "Sports"))
    assert "do not match dataset 'adaptive'" in line
    assert "not found" in one_error_line(run(argilla_stack, annotate_cache, "refresh", "--dataset", "nope"))
    # --head-output into a folder of other files: refused before anything is written (a head save replaces the
    # whole folder, so only a previous head may be there)
    foreign = tmp_path / "my-folder"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = run(argilla_stack, annotate_cache, "refresh", "--dataset", "adaptive", "--head-output", str(foreign))
    assert result.returncode == 2 and "--head-output" in one_error_line(result)
    assert "non-empty directory of other files" in one_error_line(result)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert snapshot(argilla_stack, "adaptive") == state

    # a dataset pushed before adaptation: no vector field, no cache
    rows = ag_news_slice(data_dir, 4000, 30)
    client = client_for(argilla_stack)
    old = rg.Dataset(name="oldstyle", workspace=argilla_stack.workspace, client=client,
                     settings=build_settings(LABELS, False, "pushed before adaptation"))
    old.create()
    scores = np.random.default_rng(0).dirichlet(np.ones(4), size=len(rows))
    old.records.log(build_records([record_id(r["text"]) for r in rows], [r["text"] for r in rows], scores, LABELS,
                                  False, "old:agent"))
    result = run(argilla_stack, annotate_cache, "refresh", "--dataset", "oldstyle")
    assert result.returncode == 2 and "re-push, or run refresh --embed" in one_error_line(result)
    source = write_jsonl(tmp_path / "more.jsonl", ag_news_slice(data_dir, 4100, 5))
    line = one_error_line(run(argilla_stack, annotate_cache, "push", str(source), *label_args(), "--dataset",
                              "oldstyle", "--service-url", embedding_service.url))
    assert "has no vector field" in line and "--no-adapt" in line
    plain = run(argilla_stack, annotate_cache, "push", str(source), *label_args(), "--dataset", "oldstyle",
                "--no-adapt", "--service-url", embedding_service.url)
    assert plain.returncode == 0, plain.stderr
    assert sum(1 for _ in dataset_of(argilla_stack, "oldstyle").records(with_suggestions=False)) == 35

    # --embed computes what is missing; a single reviewed class fits no head on the reviews, with a warning
    dataset = dataset_of(argilla_stack, "oldstyle")
    assert submit(dataset, {record_id(r["text"]): "Sports" for r in rows[:4]}, client.me.id) == 4
    result = run(argilla_stack, annotate_cache, "refresh", "--dataset", "oldstyle", "--embed", "--service-url",
                 embedding_service.url, "--summary-json", str(tmp_path / "old.json"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "old.json").read_text())
    assert summary["vectors_from"] == {"cache": 0, "embedded": 35} and summary["submitted"] == 4
    assert "no head is fitted on the reviews until a second label is reviewed" in result.stderr
    assert any("'Sports'" in warning for warning in summary["warnings"])
    again = run(argilla_stack, annotate_cache, "refresh", "--dataset", "oldstyle", "--summary-json",
                str(tmp_path / "old2.json"))  # no --embed needed any more: the cache has them
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "old2.json").read_text())["vectors_from"] == {"cache": 35}


def test_push_from_scores_runs_no_model(argilla_stack, embedding_service, annotate_cache, data_dir, tmp_path):
    """A scored-pool folder (as `python -m annotate score` writes it) is pushed without a scorer; a folder scored
    with another template is refused before anything is written."""
    import httpx

    from pool.store import PoolStore, shard_table

    rows = ag_news_slice(data_dir, 5000, 24)
    texts = [r["text"] for r in rows]
    answer = httpx.post(embedding_service.url + "/zero-shot", timeout=120,
                        json={"texts": texts, "labels": LABELS, "hypothesis_template": "This text is about {}."}).json()
    scores = np.array([[dict(zip(r["labels"], r["scores"]))[label] for label in LABELS] for r in answer["results"]])
    embedded = httpx.post(embedding_service.url + "/embed", json={"texts": texts}, timeout=120).json()
    store = PoolStore(tmp_path / "scored")
    store.write_shard("00000", shard_table([record_id(t) for t in texts], texts, scores,
                                           np.asarray(embedded["embeddings"]), LABELS))
    store.write_meta({"labels": LABELS, "hypothesis_template": "This text is about {}.", "multi_label": False,
                      "agent": "packaged:all-MiniLM-L6-v2:onnxruntime:embedding",
                      "encoder": {"model_id": embedded["model"], "fingerprint": embedded["fingerprint"],
                                  "dim": embedded["dim"]}})
    line = one_error_line(run(argilla_stack, annotate_cache, "push", "--from-scores", str(store.root), *label_args(),
                              "--hypothesis-template", "A story about {}.", "--dataset", "scored"))
    assert "was scored with the template" in line and dataset_of(argilla_stack, "scored") is None
    result = run(argilla_stack, annotate_cache, "push", "--from-scores", str(store.root), *label_args(),
                 "--dataset", "scored", "--summary-json", str(tmp_path / "push.json"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "push.json").read_text())
    assert summary["pushed"] == 24 and summary["scoring_seconds"] == 0 and summary["embedded"] == 0
    records = snapshot(argilla_stack, "scored")
    assert set(records) == {record_id(t) for t in texts} and all(r[4] for r in records.values())


def test_watch_refreshes_every_n_new_responses_and_stops_on_ctrl_c():
    """The --watch loop on its own (no Argilla): a round at start, then one each time `every` more responses have
    arrived; Ctrl-C (KeyboardInterrupt, raised here from the sleep between polls) ends it cleanly."""
    from annotate.refresh import watch

    counts = iter([0, 10, 24, 25, 30, 49, 50, 51])
    rounds, lines, polls = [], [], []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 8:
            raise KeyboardInterrupt

    done = watch(lambda: rounds.append(len(polls)), lambda: next(counts), every=25, poll_seconds=3, echo=lines.append,
                 sleep=sleep)
    assert done == 3 and rounds == [0, 3, 6]  # at 0, at 25, at 50 reviewed
    assert polls == [3] * 8 and lines[-1] == "stopped after 3 refresh rounds"
    assert "(25 reviewed)" in lines[1] and "(50 reviewed)" in lines[2]


def test_the_encoder_is_named_by_either_kind_of_adapted_agent():
    """A cache rebuilt from Argilla learns its encoder's name from the records' agents; after a background fine-tune
    was swapped in, every pending record carries the fine-tune's agent, not the head's (the CI failure of
    2026-12-03: the agent fell back to ``encoder:...`` and a refresh rewrote every pending record)."""
    from annotate.refresh import _encoder_named_by, _Record

    def rec(agent):
        return _Record("id", "text", {}, "World", 0.5, agent)

    assert _encoder_named_by([rec(None), rec("m/mini:encoder-finetune:abc")]) == "m/mini"
    assert _encoder_named_by([rec("zero-shot"), rec("m/mini:adaptive-head:0123")]) == "m/mini"
    assert _encoder_named_by([rec(None), rec("zero-shot:embedding")]) is None


def test_watch_fine_tunes_the_encoder_in_the_background_and_swaps_it_in(adapted, argilla_stack, annotate_cache):
    """`refresh --watch` with a real background fine-tune (a 10 s training budget on the 30 submitted records) and
    `--finetune-margin -1`, so the swap happens whatever the held-out comparison says (the rule itself is tested in
    test_finetune_job.py): the round after the job ends gives every pending record the fine-tuned encoder's
    suggestion; reviewed records stay as they were; a one-off refresh then writes nothing, and --no-finetune goes
    back to the head. Ctrl-C (SIGINT) stops the watch with exit 0."""
    import signal
    import time

    reviewed = set(adapted["submitted"]) | set(adapted["discarded"])
    before = snapshot(argilla_stack, "adaptive")
    out = adapted["tmp"]
    summary_path = out / "watch.json"
    env = {**os.environ, **argilla_stack.env(), "PYTHONUNBUFFERED": "1", "ANNOTATE_CACHE_DIR": str(annotate_cache)}
    with open(out / "watch.out", "w") as stdout, open(out / "watch.err", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "annotate", "refresh", "--dataset", "adaptive", "--watch",
                                 "--poll-seconds", "1", "--finetune-min-reviews", "20", "--finetune-time-budget", "10",
                                 "--finetune-margin", "-1", "--summary-json", str(summary_path)],
                                cwd=REPO, env=env, stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + 400
            summary = {}
            while time.monotonic() < deadline and proc.poll() is None:
                if summary_path.exists():
                    summary = json.loads(summary_path.read_text() or "{}")
                    if summary.get("finetune", {}).get("applied"):
                        break
                time.sleep(1)
            log = (out / "watch.out").read_text()
            assert summary.get("finetune", {}).get("applied") == 45, (log, (out / "watch.err").read_text()[-3000:])
        finally:
            proc.send_signal(signal.SIGINT)
            try:  # the round in progress ends first: on a loaded CI machine that took over a minute once
                rc = proc.wait(240)
            except subprocess.TimeoutExpired:
                proc.kill()  # never leave a watcher holding the dataset's cache for the tests after this one
                proc.wait(30)
                raise
    log = (out / "watch.out").read_text()
    assert rc == 0 and "stopped after 2 refresh rounds" in log, log
    assert "started in the background on 30 reviews" in log and "finished in" in log and "swapped in" in log
    tuned = summary["finetune"]
    assert tuned["in_use"] and tuned["reviewed"] == 30 and 0 < tuned["holdout"] < 30
    after = snapshot(argilla_stack, "adaptive")
    for rid, (value, score, agent, count, has_vector, meta) in after.items():
        assert count == 1 and has_vector
        if rid in reviewed:
            assert after[rid] == before[rid]
        else:
            assert agent.endswith(f":encoder-finetune:{tuned['revision']}") and meta["confidence"] == pytest.approx(score, abs=1e-6)

    # the same swap rule as the watch (with the default margin 0 a fine-tune that merely ties the head is not used)
    again = run(argilla_stack, annotate_cache, "refresh", "--dataset", "adaptive", "--finetune-margin", "-1",
                "--summary-json", str(out / "after-watch.json"))
    assert again.returncode == 0, again.stderr
    again = json.loads((out / "after-watch.json").read_text())
    assert again["updated"] == 0 and again["finetune"]["revision"] == tuned["revision"], (again, tuned)
    assert snapshot(argilla_stack, "adaptive") == after

    head = run(argilla_stack, annotate_cache, "refresh", "--dataset", "adaptive", "--no-finetune", "--summary-json",
               str(out / "no-finetune.json"))
    assert head.returncode == 0, head.stderr
    assert json.loads((out / "no-finetune.json").read_text())["updated"] == 45  # the agent kind changed back
    assert all(":adaptive-head:" in agent for rid, (_, _, agent, *_) in snapshot(argilla_stack, "adaptive").items()
               if rid not in reviewed)


def test_one_watcher_per_dataset_cache_and_sigterm_stops_it(adapted, argilla_stack, annotate_cache):
    """A second `refresh --watch` on the same dataset cache exits 2 with one line naming the first (pid, since
    when); SIGTERM stops the first like Ctrl-C (exit 0, lock released); then a watcher can start again."""
    import signal
    import time

    from annotate.cache import LOCK, DatasetCache, holder

    cache = DatasetCache(annotate_cache, argilla_stack.url, argilla_stack.workspace, "adaptive")
    out = adapted["tmp"]
    env = {**os.environ, **argilla_stack.env(), "PYTHONUNBUFFERED": "1", "ANNOTATE_CACHE_DIR": str(annotate_cache)}
    command = [sys.executable, "-m", "annotate", "refresh", "--dataset", "adaptive", "--watch", "--no-finetune",
               "--poll-seconds", "1"]
    with open(out / "lock-watch.out", "w") as stdout, open(out / "lock-watch.err", "w") as stderr:
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + 300
            while "--- refresh round 1" not in (out / "lock-watch.out").read_text() and time.monotonic() < deadline:
                assert first.poll() is None, (out / "lock-watch.err").read_text()[-3000:]
                time.sleep(0.5)
            held = holder(cache.root / LOCK)
            assert held["pid"] == first.pid and held["what"] == "refresh --watch"
            second = run(argilla_stack, annotate_cache, "refresh", "--dataset", "adaptive", "--watch", "--no-finetune")
            line = one_error_line(second)
            assert second.returncode == 2 and f"pid {first.pid}" in line and "refresh --watch" in line, line
            assert "adaptive" in line and held["since"] in line
        finally:
            first.send_signal(signal.SIGTERM)
            code = first.wait(120)
    assert code == 0, (out / "lock-watch.err").read_text()[-3000:]
    assert "stopped after" in (out / "lock-watch.out").read_text()
    assert holder(cache.root / LOCK) is None and not (cache.root / f"{LOCK}.json").exists()


def test_watch_polls_count_responses_without_reading_records(adapted, argilla_stack):
    """count_reviewed (what --watch polls) asks the server for its response counts: the same number as paging
    through every submitted or discarded record (the former poll, the reference here), in two requests."""
    import argilla as rg

    from annotate.refresh import count_reviewed

    dataset = dataset_of(argilla_stack, "adaptive")
    query = rg.Query(filter=rg.Filter(("response.status", "in", ["submitted", "discarded"])))
    paged = sum(1 for _ in dataset.records(query=query, batch_size=1000, with_suggestions=False,
                                           with_responses=False))
    assert paged == len(adapted["submitted"]) + len(adapted["discarded"]) == 35
    assert count_reviewed(dataset) == paged


EKMAN = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]


def test_refresh_of_a_multilabel_dataset_refits_the_one_vs_rest_head(argilla_stack, embedding_service, annotate_cache,
                                                                     data_dir, tmp_path):
    """A MultiLabelQuestion dataset (60 GoEmotions texts pushed with --multi-label; 30 submitted with their gold
    Ekman label sets, 3 discarded): refresh fits the one-vs-rest head and rewrites only the pending suggestions, as
    label lists with a score each; the labels shown pass their head's thresholds; a second refresh writes nothing."""
    from annotate.dataset import QUESTION
    from service.head import OneVsRestHead, load_head
    from tests.argilla_review import submit

    lines = (data_dir / "classification/dev_tasks/goemotions/test_part.jsonl").read_text().splitlines()[:60]
    rows = [json.loads(line) for line in lines]
    source = write_jsonl(tmp_path / "emotions.jsonl", [{"text": r["text"].strip()} for r in rows])  # ids: either way
    labels = [arg for label in EKMAN for arg in ("--label", label)]
    pushed = run(argilla_stack, annotate_cache, "push", str(source), *labels, "--multi-label", "--dataset",
                 "emotions", "--hypothesis-template", "This person feels {}.", "--service-url", embedding_service.url)
    assert pushed.returncode == 0, pushed.stderr
    before = snapshot(argilla_stack, "emotions")
    assert len(before) == 60 and all(isinstance(v[0], list) for v in before.values())
    gold = {record_id(r["text"].strip()): r["ekman"] for r in rows}
    ids = sorted(before)
    submitted = {rid: gold[rid] for rid in ids[:30]}
    discarded = {rid: None for rid in ids[30:33]}
    client = client_for(argilla_stack)
    assert submit(dataset_of(argilla_stack, "emotions"), {**submitted, **discarded}, client.me.id) == 33
    question = next(q for q in dataset_of(argilla_stack, "emotions").settings.questions if q.name == QUESTION)
    assert type(question).__name__ == "MultiLabelQuestion"

    result = run(argilla_stack, annotate_cache, "refresh", "--dataset", "emotions", "--summary-json",
                 str(tmp_path / "refresh.json"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "refresh.json").read_text())
    assert summary["submitted"] == 30 and summary["discarded"] == 3 and summary["pending"] == 27
    fit = summary["multi_label"]
    assert set(fit["labels"]) == set(EKMAN) and "cv macro-F1" in result.stdout
    reviewed_enough = [label for label, info in fit["labels"].items() if "cv_f1" in info]
    assert reviewed_enough  # joy and neutral have >= 5 reviewed positives among 30 GoEmotions texts
    after = snapshot(argilla_stack, "emotions")
    changed = [rid for rid in after if after[rid][:3] != before[rid][:3]]
    assert len(changed) == summary["updated"] and not set(changed) & (set(submitted) | set(discarded))
    for rid in set(submitted) | set(discarded):
        assert after[rid] == before[rid]
    head = load_head(summary["head_dir"]) if summary["head_dir"] else None
    print("multi-label fit:", json.dumps(fit))
    assert (head is not None) == (summary["mode"] == "one-vs-rest") \
        == any(info["source"] != "zero-shot" for info in fit["labels"].values())
    for rid, (value, score, agent, count, has_vector, meta) in after.items():
        assert count == 1 and has_vector and isinstance(value, list) and len(value) == len(score) >= 1
        assert [meta[teacher_key(i)] for i in range(7)] == [before[rid][5][teacher_key(i)] for i in range(7)]
        if rid in submitted or rid in discarded or head is None:
            continue
        assert agent == summary["agent"] and ":ovr-head:" in agent
        thresholds = dict(zip(EKMAN, head.thresholds))
        if len(value) > 1:  # several labels: every one passed its own threshold
            assert all(s >= thresholds[v] - 1e-9 for v, s in zip(value, score)), (value, score, thresholds)
    if head is not None:
        assert isinstance(head, OneVsRestHead) and head.revision == summary["revision"]
        assert head.meta["sources"] == [fit["labels"][label]["source"] for label in EKMAN]

    again = run(argilla_stack, annotate_cache, "refresh", "--dataset", "emotions", "--summary-json",
                str(tmp_path / "again.json"))
    assert again.returncode == 0, again.stderr
    second = json.loads((tmp_path / "again.json").read_text())
    assert second["updated"] == second["changed"] == 0 and second["revision"] == summary["revision"]
    assert snapshot(argilla_stack, "emotions") == after
