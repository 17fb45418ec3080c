"""annotate/upsert.py against a real Argilla 2.8 stack (server, worker, Redis, osmem search engine), real AG News
texts, records as push builds them (suggestion, metadata, a 384-d vector). Nothing is mocked.

* concurrent bounded upserts land every record exactly once, with its suggestion, metadata and vector;
* the same records upserted again (a rerun) add nothing;
* a batch the server refuses stops the upserter: ``close`` raises ``UpsertFailed`` with how many were written.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from annotate.client import ArgillaRefused
from annotate.dataset import QUESTION, VECTOR, build_records, build_settings, record_id, teacher_key
from annotate.upsert import Upserter, UpsertFailed

pytestmark = pytest.mark.argilla

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
DIM = 384
N = 400


@pytest.fixture(scope="module")
def pool(data_dir) -> dict:
    texts = []
    with (data_dir / "classification" / "ag_news" / "train_unlabeled_8k_description_only.jsonl").open() as handle:
        for line in handle:
            text = json.loads(line)["text"].strip()
            if text:
                texts.append(text)
            if len(texts) == N:
                break
    rng = np.random.default_rng(0)
    scores = rng.dirichlet(np.ones(len(LABELS)), size=len(texts))
    vectors = rng.normal(size=(len(texts), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return {"ids": [record_id(t) for t in texts], "texts": texts, "scores": scores, "vectors": vectors}


def records(pool: dict, start: int, stop: int, labels=LABELS) -> list:
    return build_records(pool["ids"][start:stop], pool["texts"][start:stop], pool["scores"][start:stop], labels,
                         False, "test:agent", vectors=pool["vectors"][start:stop])


def new_dataset(stack, name: str):
    import argilla as rg

    client = rg.Argilla(api_url=stack.url, api_key=stack.api_key)
    dataset = rg.Dataset(name=name, workspace=stack.workspace, client=client,
                         settings=build_settings(LABELS, False, "upsert test", vector_dim=DIM))
    dataset.create()
    return dataset


def stored(dataset) -> list:
    return list(dataset.records(batch_size=500, with_suggestions=True, with_vectors=True))


def test_all_records_land_once_and_a_rerun_adds_none(argilla_stack, pool):
    dataset = new_dataset(argilla_stack, "upsert_exactly_once")
    acknowledged = []
    with Upserter(dataset, batch_size=50, concurrency=3, on_written=acknowledged.append) as upserter:
        for start in range(0, N, 64):  # the producer's chunks (push's batch) are not the upsert batches
            upserter.submit(records(pool, start, min(start + 64, N)))
    assert upserter.stats.written == N and upserter.stats.batches == N // 50 and acknowledged == [50] * (N // 50)

    found = stored(dataset)
    assert len(found) == N and {str(r.id) for r in found} == set(pool["ids"])
    row = pool["ids"].index(str(found[7].id))
    record = found[7]
    assert record.fields["text"] == pool["texts"][row]
    assert record.suggestions[QUESTION].value == LABELS[int(pool["scores"][row].argmax())]
    assert record.suggestions[QUESTION].agent == "test:agent"
    assert record.metadata[teacher_key(2)] == pytest.approx(pool["scores"][row, 2])
    np.testing.assert_allclose(record.vectors[VECTOR], pool["vectors"][row], atol=1e-6)

    with Upserter(dataset, batch_size=150, concurrency=2) as again:  # the rerun after an interruption
        again.submit(records(pool, 0, N))
    assert again.stats.written == N and again.stats.batches == 3  # 150 + 150 + the 100 close() flushes
    assert len(stored(dataset)) == N


def test_a_refused_batch_stops_the_upserter_and_reports_what_was_written(argilla_stack, pool):
    dataset = new_dataset(argilla_stack, "upsert_refused")
    pool = {**pool, "scores": pool["scores"].copy()}
    pool["scores"][100:150, 3] = 2.0  # top label of these records: "Not a label", which Argilla answers with 422
    bad = records(pool, 100, 150, labels=LABELS[:3] + ["Not a label"])
    upserter = Upserter(dataset, batch_size=50, concurrency=1)
    upserter.submit(records(pool, 0, 100))
    upserter.submit(bad)
    with pytest.raises(UpsertFailed) as failed:
        upserter.submit(records(pool, 150, 200))
        upserter.close()
    assert failed.value.written == 100 and isinstance(failed.value.cause, ArgillaRefused)
    with pytest.raises(UpsertFailed):
        upserter.close()
    assert {str(r.id) for r in stored(dataset)} == set(pool["ids"][:100])


def test_bad_arguments_are_refused(argilla_stack):
    dataset = new_dataset(argilla_stack, "upsert_arguments")
    for kwargs in ({"batch_size": 0}, {"batch_size": 501}, {"concurrency": 0}):
        with pytest.raises(ValueError):
            Upserter(dataset, **kwargs)
