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
