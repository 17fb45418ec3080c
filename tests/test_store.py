"""pool.store: scored pools on disk (real Parquet files through pyarrow)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from pool.store import COLUMNS, PoolStore, StoreError, shard_table

LABELS = ["sports", "business", "science"]


def _shard(ids, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.dirichlet(np.ones(len(LABELS)), size=len(ids))
    vectors = rng.normal(size=(len(ids), 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return scores, vectors, shard_table(ids, [f"text {i}" for i in ids], scores, vectors, LABELS)


def test_round_trip_keeps_rows_scores_and_float16_embeddings(tmp_path):
    store = PoolStore(tmp_path / "pool")
    assert not store.exists()
    scores, vectors, table = _shard(["a", "b", "c"])
    store.write_shard("0", table)
    store.write_meta({"labels": LABELS, "encoder": {"fingerprint": "f1", "dim": 8}})
    assert [f.name for f in pq.read_schema(store.shard_path("0"))] == list(COLUMNS)
    assert not list(store.root.glob(".*"))  # no temporary file left behind
    pool = store.load()
    assert pool.ids == ["a", "b", "c"] and pool.texts == ["text a", "text b", "text c"]
    np.testing.assert_allclose(pool.scores, scores, atol=1e-6)
    np.testing.assert_allclose(pool.embeddings, vectors, atol=2e-3)  # float16
    row = pq.read_table(store.shard_path("0")).slice(1, 1).to_pylist()[0]
    assert row["suggestion"] == LABELS[int(scores[1].argmax())]
    assert row["confidence"] == pytest.approx(scores[1].max(), abs=1e-6) == pytest.approx(row["score"], abs=1e-6)
    assert store.meta()["format_version"] == 1 and store.ids() == {"a", "b", "c"}


def test_repeated_ids_across_shards_load_once_first_wins(tmp_path):
    store = PoolStore(tmp_path)
    first, _, table = _shard(["a", "b"], seed=1)
    store.write_shard("0", table)
    store.write_shard("1", _shard(["b", "c"], seed=2)[2])
    store.write_meta({"labels": LABELS})
    pool = store.load(with_texts=False)
    assert pool.ids == ["a", "b", "c"]
    np.testing.assert_allclose(pool.scores[1], first[1], atol=1e-6)


def test_check_refuses_other_labels_or_encoder_and_empty_folders(tmp_path):
    store = PoolStore(tmp_path)
    with pytest.raises(StoreError, match="no scored pool"):
        store.meta()
    store.write_meta({"labels": LABELS, "encoder": {"fingerprint": "f1"}})
    with pytest.raises(StoreError, match="no part-"):
        store.load()
    with pytest.raises(StoreError, match="has labels"):
        store.check(["sports", "business"])
    with pytest.raises(StoreError, match="encoder f1, not f2"):
        store.check(LABELS, "f2")
    assert store.check(LABELS, "f1")["labels"] == LABELS


def test_shard_table_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="scores"):
        shard_table(["a", "b"], ["x", "y"], np.ones((2, 2)), np.ones((2, 4)), LABELS)
