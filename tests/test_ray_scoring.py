"""``python -m annotate score`` (annotate/ray_scoring.py): a real Ray Data job on a local Ray instance, the real embedded
models in the actors, the real service over HTTP as the reference, 500 real AG News texts. Nothing is mocked.

* the job writes a scored pool of exactly ``pool.store.COLUMNS`` whose ids are push's content hashes and whose
  scores equal ``POST /zero-shot`` (same method) to 1e-4, embeddings ``POST /embed`` to float16 precision;
* a rerun after a shard is lost scores only that shard's rows and leaves the finished shards untouched;
* bad input: exit 2, one line on stderr, nothing written.

Ray is an extra (``[scale]``; ``scripts/setup.sh`` installs it, so CI runs these); without it the file skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'zeroshot-preannotate[scale]'; "
                                  "bash scripts/setup.sh installs it)")

from annotate.dataset import record_id  # noqa: E402
from pool.store import COLUMNS, PoolStore, _schema  # noqa: E402

from .conftest import REPO, LiveServer  # noqa: E402

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
TEMPLATE = "This text is about {}."


def run_score(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "annotate", "score", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def label_args() -> list[str]:
    return [arg for label in LABELS for arg in ("--label", label)]


@pytest.fixture(scope="module")
def embedding_service(cache_dir):
    """The real service serving only the embedding method (no NLI model to load): the reference for the job."""
    from service.app import create_app
    from service.config import Settings

    settings = Settings(model="none", method="embedding", engine="onnxruntime", cache_dir=cache_dir)
    with LiveServer(create_app(settings)) as live:
        assert live.wait_ready(300).status_code == 200
        yield live


@pytest.fixture(scope="module")
def texts500(data_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    rows = []
    with (data_dir / "classification" / "ag_news" / "test.jsonl").open(encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if i == 500:
                break
            row = json.loads(line)
            rows.append({"text": f"{row['title']}. {row['description']}", "row": i})
    path = tmp_path_factory.mktemp("score-input") / "ag_news_500.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path, rows


@pytest.fixture(scope="module")
def scored(texts500, tmp_path_factory) -> tuple[Path, dict]:
    path, _ = texts500
    out = tmp_path_factory.mktemp("scored") / "pool"
    summary = out.parent / "summary.json"
    result = run_score(str(path), "--output", str(out), *label_args(), "--hypothesis-template", TEMPLATE,
                       "--method", "embedding", "--id-column", "row", "--batch-size", "64", "--shard-rows", "128",
                       "--concurrency", "1", "--num-cpus", "1", "--summary-json", str(summary))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(summary.read_text())


def test_job_writes_the_pool_schema_with_push_ids(scored, texts500):
    import pyarrow.parquet as pq

    out, summary = scored
    _, rows = texts500
    assert summary["read"] == summary["scored"] == 500 and summary["actors"] == 1
    assert summary["shards_written"] == len(PoolStore(out).shards()) >= 4  # 500 rows, 128 a shard
    for shard in PoolStore(out).shards():
        assert pq.read_schema(shard).remove_metadata() == _schema()
        assert tuple(pq.read_schema(shard).names) == COLUMNS
    meta = PoolStore(out).meta()
    assert meta["labels"] == LABELS and meta["method"] == "embedding" and meta["hypothesis_template"] == TEMPLATE
    assert meta["encoder"]["dim"] == 384 and meta["encoder"]["fingerprint"]
    pool = PoolStore(out).load()
    want = {record_id(r["text"].strip(), str(r["row"])): r["text"].strip() for r in rows}  # push strips texts too
    assert dict(zip(pool.ids, pool.texts)) == want


def test_scores_and_embeddings_equal_the_service(scored, embedding_service):
    out, _ = scored
    pool = PoolStore(out).load()
    served, vectors = [], []
    for start in range(0, len(pool), 64):
        chunk = pool.texts[start:start + 64]
        answer = httpx.post(embedding_service.url + "/zero-shot", timeout=120,
                            json={"texts": chunk, "labels": LABELS, "hypothesis_template": TEMPLATE,
                                  "method": "embedding"}).json()
        served.extend([dict(zip(r["labels"], r["scores"]))[label] for label in LABELS] for r in answer["results"])
        vectors.extend(httpx.post(embedding_service.url + "/embed", json={"texts": chunk}, timeout=120).json()
                       ["embeddings"])
    served, vectors = np.asarray(served), np.asarray(vectors)
    np.testing.assert_allclose(pool.scores, served, atol=1e-4, rtol=0)
    np.testing.assert_allclose(pool.embeddings, vectors, atol=2e-3, rtol=0)  # stored as float16
    np.testing.assert_allclose(np.linalg.norm(pool.embeddings, axis=1), 1.0, atol=2e-3)
    import pyarrow.parquet as pq

    table = pq.read_table(PoolStore(out).shards()[0], columns=["scores", "suggestion", "score"])
    scores = np.asarray(table.column("scores").to_pylist())
    assert table.column("suggestion").to_pylist() == [LABELS[i] for i in scores.argmax(axis=1)]
    np.testing.assert_allclose(table.column("score").to_numpy(), scores.max(axis=1), atol=1e-7)


def test_rerun_scores_only_the_missing_shard(scored, texts500, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    path, _ = texts500
    src, _ = scored
    out = tmp_path / "pool"
    shutil.copytree(src, out)
    shards = PoolStore(out).shards()
    lost = shards[1]
    lost_ids = set(pq.read_table(lost, columns=["id"]).column("id").to_pylist())
    lost.unlink()
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in PoolStore(out).shards()}
    summary = tmp_path / "summary.json"
    result = run_score(str(path), "--output", str(out), *label_args(), "--hypothesis-template", TEMPLATE,
                       "--method", "embedding", "--id-column", "row", "--batch-size", "64", "--shard-rows", "1000",
                       "--summary-json", str(summary))
    assert result.returncode == 0, result.stderr[-3000:]
    done = json.loads(summary.read_text())
    assert done["scored"] == len(lost_ids) and done["skipped_done"] == 500 - len(lost_ids)
    assert done["shards_written"] == 1
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in PoolStore(out).shards()}
    assert {k: after[k] for k in before} == before  # finished shards untouched
    (new,) = set(after) - set(before)
    assert set(pq.read_table(out / new, columns=["id"]).column("id").to_pylist()) == lost_ids
    assert len(PoolStore(out).load()) == 500


def test_bad_input_exits_2_and_writes_nothing(texts500, tmp_path):
    path, _ = texts500
    out = tmp_path / "pool"
    cases = [
        ([str(tmp_path / "missing.jsonl")], "input not found"),
        ([str(path), "--label", "A", "--label", "A"], "unique"),
        ([str(path), "--label", "A", "--concurrency", "3,1"], "--concurrency"),
        ([str(path), "--label", "A", "--text-column", "body"], "column 'body' not found"),
    ]
    for args, expected in cases:
        result = run_score(*args, "--output", str(out), *([] if "--label" in args else label_args()))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr[-2000:]
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr[-2000:]
        assert not out.exists()
