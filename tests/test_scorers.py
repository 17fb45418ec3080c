"""pool.scorers against the real service over real HTTP (embedded default teacher, ONNX Runtime) and the
same model in-process: label order, agreement of both paths, retries while the service is not up yet, and a
refused request."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pool.scorers import HttpScorer, LocalScorer, ScoringError

from .conftest import LiveServer

pytestmark = pytest.mark.slow

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
TEMPLATE = "This text is about {}."
TEXTS = ["Manchester United beat Chelsea 2-1 with a late header.", "Oil prices rose after OPEC cut production.",
         "NASA launched a probe to Jupiter's moon Europa.", "Rebels attacked a convoy near the capital."]


def test_http_and_local_scorers_agree_in_label_order(zeroshot_service):
    http = HttpScorer(zeroshot_service.url, LABELS, TEMPLATE)
    scores = http.score(TEXTS)
    assert scores.shape == (4, 4) and np.allclose(scores.sum(axis=1), 1, atol=1e-6)
    assert [LABELS[i] for i in scores.argmax(axis=1)][:2] == ["Sports", "Business"]
    assert http.agent == "default:onnxruntime:nli" and http.seconds > 0 and http.texts_scored == 4
    local = LocalScorer(LABELS, TEMPLATE, model="default", engine="onnxruntime", method="nli", batch_size=3)
    assert np.allclose(local.score(TEXTS), scores, atol=1e-5) and local.agent == http.agent
    local.close()
    http_embedding = HttpScorer(zeroshot_service.url, LABELS, TEMPLATE, method="embedding")
    local_embedding = LocalScorer(LABELS, TEMPLATE, engine="onnxruntime", method="embedding")
    assert np.allclose(local_embedding.score(TEXTS), http_embedding.score(TEXTS), atol=1e-5)
    assert local_embedding.agent == http_embedding.agent == "packaged:all-MiniLM-L6-v2:onnxruntime:embedding"
    local_embedding.close()
    http_embedding.close()
    with pytest.raises(ScoringError, match="empty or whitespace"):
        http.score(["fine", "   "])
    http.close()


def test_http_scorer_waits_for_a_service_that_starts_late(tiny_model_dir, cache_dir):
    from service.app import create_app
    from service.config import Settings

    live = LiveServer(create_app(Settings(model=str(tiny_model_dir), engine="onnxruntime", cache_dir=cache_dir,
                                          max_texts=2)))
    starter = threading.Timer(1.5, live.__enter__)  # nothing listens for 1.5 s: connection refused, then 503
    began = time.monotonic()
    starter.start()
    try:
        scorer = HttpScorer(live.url, ["a", "b"], TEMPLATE, ready_timeout=120)
        assert time.monotonic() - began >= 1.5 and scorer.batch_size == 2
        assert scorer.score(["one", "two", "three"]).shape == (3, 2)  # split into requests of max_texts
    finally:
        starter.join()
        live.__exit__()


def test_http_scorer_gives_up_on_no_service():
    from .conftest import free_port

    with pytest.raises(ScoringError, match="not usable"):
        HttpScorer(f"http://127.0.0.1:{free_port()}", LABELS, TEMPLATE, ready_timeout=1.5)


def _requests(url: str, endpoint: str) -> float:
    """``POST endpoint`` requests answered 200 so far, from the service's own Prometheus counter."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        if family.name == "zsc_requests":
            return sum(s.value for s in family.samples if s.name == "zsc_requests_total"
                       and s.labels.get("endpoint") == endpoint and s.labels.get("status") == "200")
    return 0.0


@pytest.mark.parametrize("method", ["embedding", "ensemble", "nli"])
def test_score_and_embed_is_one_request_a_chunk_and_equals_two_calls(zeroshot_service, method):
    """Scores and embeddings from one POST /zero-shot a chunk equal POST /zero-shot + POST /embed (1e-5), counted on
    the live server's own request counter; the in-process scorer gives the same from one call."""
    texts = TEXTS * 5 + ["A very long report on the markets. " * 80]  # 21 texts, one past the encoder's window
    http = HttpScorer(zeroshot_service.url, LABELS, TEMPLATE, method=method)
    http.batch_size = 8  # 3 chunks
    apart_scores, apart_vectors = http.score(texts), http.embed(texts)
    before = {e: _requests(zeroshot_service.url, e) for e in ("/zero-shot", "/embed")}
    scores, vectors = http.score_and_embed(texts)
    after = {e: _requests(zeroshot_service.url, e) for e in ("/zero-shot", "/embed")}
    assert after["/zero-shot"] - before["/zero-shot"] == 3 and after["/embed"] == before["/embed"]
    assert http.one_call is True and http.texts_scored == 2 * len(texts)
    assert scores.shape == (21, 4) and vectors.shape == (21, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(scores, apart_scores, atol=1e-5)
    np.testing.assert_allclose(vectors, apart_vectors, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert http.encoder["dim"] == 384 and http.served_method == method
    local = LocalScorer(LABELS, TEMPLATE, engine="onnxruntime", method=method, batch_size=8)
    local_scores, local_vectors = local.score_and_embed(texts)
    np.testing.assert_allclose(local_scores, local.score(texts), atol=1e-5)
    np.testing.assert_allclose(local_vectors, local.embed(texts), atol=1e-5)
    np.testing.assert_allclose(local_scores, scores, atol=1e-5)
    np.testing.assert_allclose(local_vectors, vectors, atol=1e-5)
    local.close()
    http.close()


def test_shared_pass_where_the_method_embeds_the_texts(zeroshot_service):
    """The service says whether the embeddings came from the scoring pass: embedding and ensemble with truncation
    yes, NLI (another model) and long_text=chunks no; without a sentence encoder return_embeddings is a 422."""
    import httpx

    def ask(**extra):
        return httpx.post(zeroshot_service.url + "/zero-shot", json={"texts": TEXTS, "labels": LABELS,
                                                                     "return_embeddings": True, **extra}, timeout=120)

    shared = {m: ask(method=m).json()["encoder"]["shared_pass"] for m in ("embedding", "ensemble", "nli")}
    assert shared == {"embedding": True, "ensemble": True, "nli": False}
    chunks = ask(method="embedding", long_text="chunks").json()
    assert chunks["encoder"]["shared_pass"] is False and len(chunks["embeddings"]) == 4
    plain = httpx.post(zeroshot_service.url + "/zero-shot", json={"texts": TEXTS, "labels": LABELS}, timeout=120).json()
    assert plain["embeddings"] is None and plain["encoder"] is None


def test_no_encoder_refuses_return_embeddings(tiny_model_dir, cache_dir):
    import httpx

    from service.app import create_app
    from service.config import Settings

    with LiveServer(create_app(Settings(model=str(tiny_model_dir), embedding_model="none", engine="onnxruntime",
                                        cache_dir=cache_dir))) as live:
        assert live.wait_ready().status_code == 200
        answer = httpx.post(live.url + "/zero-shot", json={"texts": ["one"], "labels": ["a", "b"],
                                                           "return_embeddings": True})
        assert answer.status_code == 422 and "no sentence encoder" in answer.json()["detail"][0]["msg"]
        scorer = HttpScorer(live.url, ["a", "b"], TEMPLATE)
        with pytest.raises(ScoringError, match="no sentence encoder"):
            scorer.score_and_embed(["one"])
        scorer.close()


def test_http_scorer_sizes_requests_by_the_body_limit(tiny_model_dir, cache_dir):
    """Long documents go in requests under the service's max_body_bytes (from GET /info), never a 413; a text too big
    for any request is refused before sending, saying what to do."""
    import httpx

    from service.app import create_app
    from service.config import Settings

    limit = 6000
    with LiveServer(create_app(Settings(model=str(tiny_model_dir), engine="onnxruntime", cache_dir=cache_dir,
                                        max_body_bytes=limit, max_text_chars=limit))) as live:
        assert live.wait_ready().status_code == 200
        long_texts = [f"Document {i}: " + "the markets moved on trade news. " * 50 for i in range(6)]  # ~1.7 kB each
        scorer = HttpScorer(live.url, ["a", "b"], TEMPLATE, method="embedding")
        assert scorer.max_body_bytes == limit and scorer.batch_size == 64
        whole = httpx.post(live.url + "/zero-shot", json={"texts": long_texts, "labels": ["a", "b"]})
        assert whole.status_code == 413  # what one request of them all gets
        chunks = list(scorer._chunks(long_texts))
        assert [len(c) for c in chunks] == [3, 3] and sum(chunks, []) == long_texts
        before = _requests(live.url, "/zero-shot")
        scores, vectors = scorer.score_and_embed(long_texts)
        assert scores.shape == (6, 2) and vectors.shape[0] == 6
        assert _requests(live.url, "/zero-shot") - before == 2 and _requests(live.url, "/zero-shot") > 0
        assert scorer.score(long_texts).shape == (6, 2) and scorer.embed(long_texts).shape[0] == 6
        with pytest.raises(ScoringError, match="ZSC_MAX_BODY_BYTES"):
            scorer.score(["x" * limit])
        scorer.close()


def test_http_scorer_sends_the_service_api_key(tiny_model_dir, cache_dir):
    """A service started with ZSC_API_KEY (as docker compose requires) answers the scorer that carries the key, and
    refuses, with a message saying what to send, the one that does not."""
    from service.app import create_app
    from service.config import Settings

    with LiveServer(create_app(Settings(model=str(tiny_model_dir), engine="onnxruntime", cache_dir=cache_dir,
                                        api_key="compose-key-1"))) as live:
        assert live.wait_ready().status_code == 200
        keyed = HttpScorer(live.url, ["a", "b"], TEMPLATE, api_key="compose-key-1")
        assert keyed.score(["one", "two"]).shape == (2, 2)
        keyed.close()
        with pytest.raises(ScoringError, match="401|API key|Bearer"):
            HttpScorer(live.url, ["a", "b"], TEMPLATE, api_key="wrong", ready_timeout=10).score(["one"])
