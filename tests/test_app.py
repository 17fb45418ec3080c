"""The HTTP API over real HTTP: every endpoint, the three methods, every bad-input case, and `python -m service`."""

import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.config import Settings

from .conftest import REPO, LiveServer, free_port

pytestmark = pytest.mark.slow

LABELS = ["sports", "business", "politics"]


@pytest.fixture(scope="module")
def server(tiny_model_dir, minilm_dir, cache_dir):
    settings = Settings(model=str(tiny_model_dir), embedding_model=str(minilm_dir), method="nli", engine="onnxruntime",
                        cache_dir=cache_dir, max_texts=3, max_labels=4, max_labels_embedding=6, max_text_chars=500,
                        batch_wait_ms=50, quantization="none")  # float32: scores are checked to 1e-4 against
    # the transformers pipeline and sentence-transformers (the int8 forms: tests/test_embedding.py, test_quantization.py)
    with LiveServer(create_app(settings)) as live:
        assert live.wait_ready().status_code == 200
        yield live


def post(server, **body):
    return httpx.post(server.url + "/zero-shot", json=body, timeout=60)


def test_health_ready_info(server, tiny_model_dir, minilm_dir):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/ready").json()
    assert ready["status"] == "ready" and ready["methods"] == ["nli", "embedding", "ensemble"]
    assert ready["default_method"] == "nli"  # the fixture pins it; the shipped default is auto
    info = httpx.get(server.url + "/info").json()
    assert set(info["methods"]) == {"nli", "embedding", "ensemble"}
    assert info["methods"]["ensemble"]["models"] == ["nli", "embedding"]
    nli, embedding = info["models"]["nli"], info["models"]["embedding"]
    assert nli["model_path"] == str(tiny_model_dir) and embedding["model_path"] == str(minilm_dir)
    assert nli["engine"] == embedding["engine"] == "onnxruntime"
    assert nli["max_length"] == 48 and embedding["max_length"] == 256 and embedding["pooling"] == "mean"
    assert nli["label2id"] == {"contradiction": 0, "neutral": 1, "entailment": 2}
    assert nli["entailment_id"] == 2 and nli["contradiction_id"] == 0
    assert nli["sparsity"] == 0.0 and nli["quantization"] == "none"
    assert nli["calibration"] is None and "uncalibrated" in nli["calibration_note"]  # a test model: nothing fitted
    assert embedding["calibration"]["temperature"] < 1  # the packaged encoder's shipped calibration
    assert info["limits"] == {"max_texts": 3, "max_labels": 4, "max_labels_embedding": 6, "max_text_chars": 500}


def test_zero_shot_answers_one_sorted_result_per_text_in_order(server, tiny_model_dir):
    texts = ["The match ended in a draw.", "Stocks rallied on Friday."]
    response = post(server, texts=texts, labels=LABELS, hypothesis_template="This text is about {}.")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["text"] for r in body["results"]] == texts
    for result in body["results"]:
        assert sorted(result["labels"]) == sorted(LABELS)
        assert result["scores"] == sorted(result["scores"], reverse=True)
        assert sum(result["scores"]) == pytest.approx(1, abs=1e-6)
    assert body["engine"] == "onnxruntime" and body["multi_label"] is False and body["method"] == "nli"

    from transformers import pipeline

    expected = pipeline("zero-shot-classification", model=str(tiny_model_dir), device="cpu")(
        texts, candidate_labels=LABELS, hypothesis_template="This text is about {}.")
    for want, got in zip(expected, body["results"]):
        assert got["labels"] == want["labels"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-4)


def test_embedding_method_scores_tempered_cosine_similarities(server, minilm_dir):
    from sentence_transformers import SentenceTransformer

    texts = ["The match ended in a draw.", "Stocks rallied on Friday."]
    body = post(server, texts=texts, labels=LABELS, method="embedding").json()
    assert body["method"] == "embedding" and body["model"] == str(minilm_dir) and body["engine"] == "onnxruntime"
    temperature = httpx.get(server.url + "/info").json()["models"]["embedding"]["calibration"]["temperature"]
    encoder = SentenceTransformer(str(minilm_dir), device="cpu")
    cos = encoder.encode(texts, normalize_embeddings=True) @ encoder.encode(
        [f"This text is about {label}." for label in LABELS], normalize_embeddings=True).T
    expected = np.exp(cos / temperature) / np.exp(cos / temperature).sum(axis=1, keepdims=True)
    for row, result in zip(expected, body["results"]):
        assert result["labels"] == [LABELS[i] for i in np.argsort(-row)]
        assert result["scores"] == pytest.approx(sorted(row, reverse=True), abs=1e-4)


def test_ensemble_method_over_http(server, tiny_model_dir, minilm_dir):
    body = post(server, texts=["Rain is expected tomorrow."], labels=LABELS, method="ensemble").json()
    assert body["method"] == "ensemble" and body["model"] == f"{tiny_model_dir}+{minilm_dir}"
    assert body["engine"] == "onnxruntime+onnxruntime"
    assert sum(body["results"][0]["scores"]) == pytest.approx(1, abs=1e-6)
    multi = post(server, texts=["Rain is expected tomorrow."], labels=LABELS, method="ensemble", multi_label=True)
    assert multi.status_code == 200 and all(0 < s < 1 for s in multi.json()["results"][0]["scores"])


def test_auto_method_picks_embedding_for_single_label_and_nli_for_multi_label(server):
    single = post(server, texts=["Rain is expected tomorrow."], labels=LABELS, method="auto").json()
    multi = post(server, texts=["Rain is expected tomorrow."], labels=LABELS, method="auto", multi_label=True).json()
    one_label = post(server, texts=["Rain is expected tomorrow."], labels=["weather"], method="auto").json()
    assert (single["method"], multi["method"], one_label["method"]) == ("embedding", "nli", "nli")
    settings = Settings(model="none", embedding_model="default")  # auto with one model: that model's method
    assert settings.method == "auto" and settings.resolve_method(None, multi_label=True) == "embedding"


def test_a_method_that_is_not_loaded_is_a_422(tiny_model_dir, cache_dir):
    settings = Settings(model=str(tiny_model_dir), embedding_model="none", engine="onnxruntime", cache_dir=cache_dir)
    with LiveServer(create_app(settings)) as live:
        assert live.wait_ready().json()["methods"] == ["nli"]
        response = httpx.post(live.url + "/zero-shot", json={"texts": ["a"], "labels": LABELS, "method": "ensemble"})
        assert response.status_code == 422 and "method 'ensemble' is not loaded" in response.text
        assert "choose one of nli" in response.text


def test_multi_label_and_default_template(server):
    body = post(server, texts=["Rain is expected tomorrow."], labels=LABELS, multi_label=True).json()
    assert body["hypothesis_template"] == "This text is about {}."
    assert body["multi_label"] is True
    assert all(0 <= s <= 1 for s in body["results"][0]["scores"])
    assert sum(body["results"][0]["scores"]) != pytest.approx(1, abs=1e-3)


def test_template_braces_are_never_formatted(server):
    response = post(server, texts=["x y z"], labels=["a"], hypothesis_template="{0.__class__} and {}")
    assert response.status_code == 200
    assert response.json()["hypothesis_template"] == "{0.__class__} and {}"


@pytest.mark.parametrize("body, fragment", [
    ({"texts": [], "labels": LABELS}, "texts is empty"),
    ({"texts": ["a"], "labels": []}, "labels is empty"),
    ({"texts": ["ok", "  "], "labels": LABELS}, "texts[1] is empty"),
    ({"texts": ["ok"], "labels": ["sports", ""]}, "labels[1] is empty"),
    ({"texts": ["ok"], "labels": ["sports", "news", "sports"]}, "labels must be unique"),
    ({"texts": ["a", "b", "c", "d"], "labels": LABELS}, "exceed the limit of 3"),
    ({"texts": ["a"], "labels": ["a", "b", "c", "d", "e"]}, "exceed the limit of 4 per request with the nli method "
     "(the embedding method takes up to 6)"),
    ({"texts": ["a"], "labels": list("abcdefg"), "method": "embedding"}, "exceed the limit of 6"),
    ({"texts": ["a"], "labels": LABELS, "method": "bm25"}, "Input should be 'auto', 'nli', 'embedding' or 'ensemble'"),
    ({"texts": ["a" * 501], "labels": LABELS}, "over the limit of 500"),
    ({"texts": ["a"], "labels": LABELS, "hypothesis_template": "About it."}, "exactly one '{}'"),
    ({"texts": ["a"], "labels": LABELS, "hypothesis_template": "{} or {}"}, "exactly one '{}'"),
    ({"texts": ["a"], "labels": LABELS, "hypothesis_template": "{0.__class__}"}, "exactly one '{}'"),
    ({"texts": ["a"], "labels": LABELS, "temperature": 2}, "Extra inputs are not permitted"),
    ({"texts": ["a"], "labels": ["a " * 99]}, "shorten the label or the template"),  # > the tiny model's 48 tokens
    ({"texts": "a single string", "labels": LABELS}, "valid list"),
])
def test_bad_input_is_a_422_that_says_what_to_fix(server, body, fragment):
    response = post(server, **body)
    assert response.status_code == 422, response.text
    assert fragment in response.text


def test_a_bad_request_does_not_disturb_the_next_one(server):
    assert post(server, texts=[], labels=LABELS).status_code == 422
    assert post(server, texts=["fine"], labels=LABELS).status_code == 200


def test_a_model_that_fails_to_load_is_reported(cache_dir, tmp_path):
    settings = Settings(model=str(tmp_path / "no-such-model"), engine="onnxruntime", cache_dir=cache_dir)
    with LiveServer(create_app(settings)) as live:
        ready = live.wait_ready()
        assert ready.status_code == 500 and "does not exist" in ready.json()["error"]
        assert httpx.get(live.url + "/health").status_code == 200
        response = httpx.post(live.url + "/zero-shot", json={"texts": ["a"], "labels": ["b"]})
        assert response.status_code == 503 and "does not exist" in response.text


@pytest.mark.parametrize("launcher", ["python -m service", "uvicorn service.app:app"])
def test_the_documented_launchers_serve_over_http(launcher, tiny_model_dir, cache_dir):
    port = free_port()
    env = {**os.environ, "ZSC_CACHE_DIR": str(cache_dir), "ZSC_MODEL": str(tiny_model_dir), "ZSC_ENGINE": "torch",
           "ZSC_EMBEDDING_MODEL": "none"}
    if launcher == "python -m service":
        command = [sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"]
    else:
        command = [sys.executable, "-m", "uvicorn", "service.app:app", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(command, cwd=REPO, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert httpx.get(url + "/info").json()["models"]["nli"]["engine"] == "torch"
        body = httpx.post(url + "/zero-shot", json={"texts": ["Goal!"], "labels": LABELS}).json()
        assert len(body["results"]) == 1
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("args, fragment", [
    (["--engine", "tensorrt"], "engine"),
    (["--model", "none", "--method", "nli"], "method 'nli' needs model to name a model"),
    (["--model", "none", "--embedding-model", "none"], "both 'none'"),
    (["--method", "ensemble", "--embedding-model", "none"], "needs embedding_model"),
])
def test_bad_cli_option_exits_nonzero_with_one_line(args, fragment):
    proc = subprocess.run([sys.executable, "-m", "service", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and fragment in proc.stderr


def test_concurrent_requests_share_batches_and_keep_their_answers(server):
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"Report number {i}: the {w} made headlines on Monday." for i, w in
             enumerate(["striker", "central bank", "senate", "rover", "coach", "merger", "election", "probe"])]
    one = lambda t: post(server, texts=[t], labels=LABELS, method="nli").json()["results"][0]  # noqa: E731
    sequential = [one(t) for t in texts]
    before = httpx.get(server.url + "/info").json()["models"]["nli"]["batching"]
    with ThreadPoolExecutor(len(texts)) as pool:
        concurrent = list(pool.map(one, texts))
    for a, b in zip(sequential, concurrent):
        assert a["labels"] == b["labels"]
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
    after = httpx.get(server.url + "/info").json()["models"]["nli"]["batching"]
    assert after["micro_batching"] and after["max_jobs_per_round"] > 1
    assert after["batches"] - before["batches"] < len(texts)  # fewer forward passes than requests


def test_a_saturated_queue_answers_503_with_retry_after(tiny_model_dir, cache_dir):
    from concurrent.futures import ThreadPoolExecutor

    settings = Settings(model=str(tiny_model_dir), embedding_model="none", engine="onnxruntime", cache_dir=cache_dir,
                        batch_wait_ms=800, max_queue=4)
    with LiveServer(create_app(settings)) as live:
        live.wait_ready()
        body = {"texts": ["a text"], "labels": LABELS}  # 3 pairs each: two of them overflow a queue of 4
        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(lambda _: httpx.post(live.url + "/zero-shot", json=body, timeout=60), range(2)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 503], [r.text for r in responses]
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "saturated" in refused.text
