"""The HTTP API over real HTTP: every endpoint, the three methods, every bad-input case, and `python -m service`."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.config import Settings

from .conftest import REPO, LiveServer, free_port

pytestmark = pytest.mark.slow

LABELS = ["sports", "business", "politics"]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, minilm_dir):
    """A fastText student (random head, MiniLM embeddings) saved and exported as train/finetune.py does: the
    classifier /classify serves here."""
    import torch
    from transformers import AutoTokenizer

    from train.students import build_student, export_onnx, save_student

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("student")
    labels = ["World", "Sports", "Business", "Sci/Tech"]
    model = build_student("fasttext", labels=labels, multi_label=False, base_dir=minilm_dir).eval()
    save_student(model, out, kind="fasttext", labels=labels, multi_label=False,
                 tokenizer=AutoTokenizer.from_pretrained(minilm_dir), max_length=64)
    export_onnx(model, out / "model.onnx")
    return out


@pytest.fixture(scope="module")
def server(tiny_model_dir, minilm_dir, student_dir, cache_dir):
    settings = Settings(model=str(tiny_model_dir), embedding_model=str(minilm_dir), method="nli", engine="onnxruntime",
                        cache_dir=cache_dir, max_texts=3, max_labels=4, max_labels_embedding=6, max_text_chars=5000,
                        classifiers={"student": str(student_dir)},
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
    assert nli["model_path"] == str(tiny_model_dir)  # the packaged encoder's: the same folder, maybe via a link
    assert Path(embedding["model_path"]).resolve() == Path(minilm_dir).resolve()
    assert nli["engine"] == embedding["engine"] == "onnxruntime"
    assert nli["max_length"] == 48 and embedding["max_length"] == 256 and embedding["pooling"] == "mean"
    assert nli["label2id"] == {"contradiction": 0, "neutral": 1, "entailment": 2}
    assert nli["entailment_id"] == 2 and nli["contradiction_id"] == 0
    assert nli["sparsity"] == 0.0 and nli["quantization"] == "none"
    assert nli["calibration"] is None and "uncalibrated" in nli["calibration_note"]  # a test model: nothing fitted
    assert embedding["calibration"]["temperature"] < 1  # the packaged encoder's shipped calibration
    assert info["limits"] == {"max_texts": 3, "max_labels": 4, "max_labels_embedding": 6, "max_text_chars": 5000,
                              "max_body_bytes": 2 * 1024 * 1024, "max_chunks": 64, "max_concurrent_requests": 128,
                              "body_timeout_s": 30.0}  # the shipped defaults where the fixture sets none
    if info["allocator"]["applied_by"] != "environment":  # glibc (Linux CI): the shipped 1 MiB threshold is set
        assert info["allocator"]["malloc_mmap_threshold_kib"] in (1024, None)
        assert (info["allocator"]["malloc_mmap_threshold_kib"] == 1024) == (sys.platform == "linux")


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
     "(ZSC_MAX_LABELS; the embedding method takes up to 6)"),
    ({"texts": ["a"], "labels": list("abcdefg"), "method": "embedding"}, "exceed the limit of 6 per request "
     "(ZSC_MAX_LABELS_EMBEDDING)"),
    ({"texts": ["a"], "labels": LABELS, "method": "bm25"}, "Input should be 'auto', 'nli', 'embedding' or 'ensemble'"),
    ({"texts": ["a" * 5001], "labels": LABELS}, "over the limit of 5000 (ZSC_MAX_TEXT_CHARS)"),
    ({"texts": ["a"], "labels": LABELS, "hypothesis_template": "About it."}, "exactly one '{}'"),
    ({"texts": ["a"], "labels": LABELS, "hypothesis_template": "{} or {}"}, "exactly one '{}'"),
    ({"texts": ["a"], "labels": LABELS, "hypothesis_template": "{0.__class__}"}, "exactly one '{}'"),
    ({"texts": ["a"], "labels": LABELS, "temperature": 2}, "Extra inputs are not permitted"),
    ({"texts": ["a"], "labels": ["a " * 99]}, "shorten the label or the template"),  # > the tiny model's 48 tokens
    ({"texts": "a single string", "labels": LABELS}, "valid list"),
    ({"texts": ["a"], "labels": LABELS, "label_descriptions": {"music": ["Songs."]}},
     "label_descriptions names 'music', which is not among the labels"),
    ({"texts": ["a"], "labels": LABELS, "label_descriptions": {"sports": ["  "]}},
     "label_descriptions['sports'][0] is empty"),
    ({"texts": ["a"], "labels": ["a", "b", "c"], "label_descriptions": {"a": ["One.", "Two."]}},
     "3 labels and 2 label descriptions (each counts as a label) exceed the limit of 4"),
    ({"texts": ["a", "b"], "labels": LABELS, "bias_correction": "floor"}, "send the whole pool, at least 20 texts"),
    ({"texts": ["a"], "labels": LABELS, "bias_correction": "floor", "multi_label": True},
     "bias_correction applies to single-label scores"),
    ({"texts": ["a"], "labels": LABELS, "bias_correction": "median"}, "Input should be 'none', 'floor' or 'batch'"),
])
def test_bad_input_is_a_422_that_says_what_to_fix(server, body, fragment):
    response = post(server, **body)
    assert response.status_code == 422, response.text
    assert fragment in response.text


def test_label_descriptions_change_the_scores_of_the_described_label_only_through_its_hypotheses(server):
    body = {"texts": ["The striker scored twice.", "Shares fell."], "labels": ["sports", "business"],
            "method": "embedding"}
    plain = post(server, **body).json()
    described = post(server, **body, label_descriptions={"business": ["Stock markets and company earnings."]})
    assert described.status_code == 200, described.text
    assert [r["scores"] for r in described.json()["results"]] != [r["scores"] for r in plain["results"]]
    assert described.json()["bias"] is None


@pytest.fixture(scope="module")
def pool_server(minilm_dir, cache_dir):
    """The embedding method alone, with room for a pool in one request (bias_correction)."""
    settings = Settings(model="none", embedding_model=str(minilm_dir), method="embedding", engine="onnxruntime",
                        cache_dir=cache_dir, max_texts=64)
    with LiveServer(create_app(settings)) as live:
        assert live.wait_ready().status_code == 200
        yield live


def test_bias_correction_over_a_pool_raises_the_starved_label_and_says_so(pool_server):
    """Forty texts, all but four about sports, scored for two labels: ``business`` is the top label of fewer than
    half its fair share; floor raises it to a quarter of the texts, and the answer says what it did."""
    texts = [f"The team won match number {i} in the league." for i in range(36)] + [
        "Quarterly earnings beat forecasts.", "The bank raised its rates.", "Oil prices fell.", "The merger closed."]
    body = {"texts": texts, "labels": ["sports", "business"], "method": "embedding"}
    plain = httpx.post(pool_server.url + "/zero-shot", json=body, timeout=60).json()
    corrected = httpx.post(pool_server.url + "/zero-shot", json={**body, "bias_correction": "floor"}, timeout=60)
    assert corrected.status_code == 200, corrected.text
    answer = corrected.json()
    tops = [r["labels"][0] for r in answer["results"]]
    assert sum(t == "business" for t in tops) >= 10 > sum(r["labels"][0] == "business" for r in plain["results"])
    assert answer["bias"]["method"] == "floor" and answer["bias"]["shift"]["business"] > 0
    assert answer["bias"]["shift"]["sports"] == 0 and "'business'" in answer["bias"]["note"]
    none = httpx.post(pool_server.url + "/zero-shot", json={**body, "bias_correction": "none"}, timeout=60).json()
    assert none["results"] == plain["results"] and none["bias"] is None


CJK = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(5000))  # no whitespace; one token a character


def text_endpoints(schema: dict) -> dict[str, dict]:
    """Every POST operation of the OpenAPI ``schema`` whose JSON body has ``texts``: path -> a valid body built from
    the schema's own examples (its required fields)."""
    found = {}
    for path, operations in schema["paths"].items():
        ref = operations.get("post", {}).get("requestBody", {}).get("content", {}).get("application/json", {}).get(
            "schema", {}).get("$ref")
        body = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else {}
        if "texts" in body.get("properties", {}):
            found[path] = {name: body["properties"][name]["examples"][0] for name in body["required"]}
    return found


def test_every_endpoint_that_takes_texts_checks_the_same_limits(server):
    endpoints = text_endpoints(httpx.get(server.url + "/openapi.json").json())
    assert set(endpoints) == {"/zero-shot", "/embed", "/classify"}  # a new one is checked here as soon as it exists
    for path, body in endpoints.items():
        assert httpx.post(server.url + path, json=body, timeout=60).status_code == 200, path
        too_many = httpx.post(server.url + path, json={**body, "texts": ["A text."] * 4}, timeout=60)
        assert too_many.status_code == 422 and too_many.json()["detail"][0]["msg"] == \
            "4 texts exceed the limit of 3 per request (ZSC_MAX_TEXTS): split them into several requests", path
        too_long = httpx.post(server.url + path, json={**body, "texts": ["ok", CJK + "x"]}, timeout=60)
        assert too_long.status_code == 422, (path, too_long.text)
        problem = too_long.json()["detail"][0]
        assert problem["loc"] == ["body", "texts", 1] and problem["type"] == "limit_exceeded"
        assert problem["msg"].startswith("texts[1] has 5001 characters, over the limit of 5000 (ZSC_MAX_TEXT_CHARS)")
        at_limit = httpx.post(server.url + path, json={**body, "texts": [CJK]}, timeout=60)
        assert at_limit.status_code == 200, (path, at_limit.text)
        if "results" in at_limit.json():
            assert at_limit.json()["results"][0]["truncated"] is True, path


def test_embed_reads_a_long_text_as_the_encoder_would_without_tokenizing_it_whole(server, minilm_dir):
    from sentence_transformers import SentenceTransformer

    texts = [CJK, POLITICS * 30]  # no whitespace; whitespace: both past the encoder's 256 tokens
    got = np.array(httpx.post(server.url + "/embed", json={"texts": texts}, timeout=60).json()["embeddings"])
    want = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(got, want, atol=1e-4)  # the whole texts, truncated by sentence-transformers


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


def test_loading_before_serving_answers_only_once_ready_or_fails_to_start(tiny_model_dir, cache_dir, tmp_path):
    """``load_before_serving`` (Ray Serve replicas): the server starts answering only once the models are in, so the
    first ``/ready`` is 200 with no waiting; models that cannot load fail the start-up with the loader's error."""
    import asyncio

    settings = Settings(model=str(tiny_model_dir), embedding_model="none", engine="onnxruntime", cache_dir=cache_dir)
    with LiveServer(create_app(settings, load_before_serving=True)) as live:  # started: the lifespan has returned
        first = httpx.get(live.url + "/ready")
        assert first.status_code == 200 and first.json()["methods"] == ["nli"]
    app = create_app(Settings(model=str(tmp_path / "no-such-model"), embedding_model="none", engine="onnxruntime",
                              cache_dir=cache_dir), load_before_serving=True)

    async def start_up():
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(RuntimeError, match="the models failed to load: .*does not exist"):
        asyncio.run(start_up())


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


@pytest.mark.slow
def test_python_m_service_serves_without_torch_and_exports_in_a_child(tiny_model_dir, tmp_path):
    """``python -m service`` (engine onnxruntime, an empty cache, so the graph must be exported) runs transformers
    without torch: torch's shared library is never mapped into the serving process, the export ran in a child,
    and the scores equal the in-process service's (which runs with torch, as these tests do)."""
    cache = tmp_path / "cache"
    port = free_port()
    env = {**os.environ, "ZSC_CACHE_DIR": str(cache), "ZSC_MODEL": str(tiny_model_dir), "ZSC_ENGINE": "onnxruntime",
           "ZSC_EMBEDDING_MODEL": "none", "ZSC_QUANTIZATION": "none", "ZSC_CALIBRATE": "false"}
    env.pop("USE_TORCH", None)
    proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"],
                            cwd=REPO, env=env)
    body = {"texts": ["The match ended in a draw.", "Shares fell sharply."], "labels": LABELS, "method": "nli"}
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(url + "/ready")
                if ready.status_code != 503:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, ready.text if ready is not None else proc.returncode
        served = httpx.post(url + "/zero-shot", json=body).json()
        maps = open(f"/proc/{proc.pid}/maps").read()
        assert "libtorch" not in maps, "the serving process loaded torch"
        assert "onnxruntime" in maps
    finally:
        proc.terminate()
        proc.wait(30)
    assert list((cache / "onnx").rglob("model.onnx")), "no graph was exported into the cache"
    in_process = Settings(model=str(tiny_model_dir), engine="onnxruntime", embedding_model="none", quantization="none",
                          calibrate=False, cache_dir=cache)
    with LiveServer(create_app(in_process)) as live:
        live.wait_ready()
        expected = httpx.post(live.url + "/zero-shot", json=body).json()
    for got, want in zip(served["results"], expected["results"]):
        assert got["labels"] == want["labels"]
        np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-6)


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


# --- issue 12: long texts, metrics, API key, body and concurrency limits, graceful shutdown ------------------------

POLITICS = ("The senate debated the budget bill for hours and the opposition demanded new elections before the "
            "prime minister's coalition could pass the reform. ")
SPORTS = ("In the final minute the striker scored a stunning goal, the stadium erupted, and the football club won "
          "the championship trophy after a penalty shootout against its rivals. ")


def test_a_text_longer_than_the_window_is_truncated_and_says_so(server, tiny_model_dir):
    long_text = POLITICS * 6  # ~130 tokens: over the tiny NLI model's 48 and within the encoder's 256
    body = post(server, texts=[long_text, "Stocks rallied."], labels=LABELS, method="nli").json()
    assert [r["truncated"] for r in body["results"]] == [True, False]
    from transformers import pipeline  # truncation is the pipeline's (premise only): same scores on the whole text

    expected = pipeline("zero-shot-classification", model=str(tiny_model_dir), device="cpu")(
        long_text, candidate_labels=LABELS, hypothesis_template="This text is about {}.")
    assert body["results"][0]["labels"] == expected["labels"]
    assert body["results"][0]["scores"] == pytest.approx(expected["scores"], abs=1e-4)
    embedded = post(server, texts=[long_text, POLITICS * 20], labels=LABELS, method="embedding").json()
    assert [r["truncated"] for r in embedded["results"]] == [False, True]  # 256 tokens for the encoder


def windows_of(server_url, method, text, labels):
    """The windows ``long_text=chunks`` scores, rebuilt with the module's own splitter and the model's tokenizer."""
    from transformers import AutoTokenizer

    from service.long_text import special_tokens, split_windows

    model = httpx.get(server_url + "/info").json()["models"][method]
    tokenizer = AutoTokenizer.from_pretrained(model["model_path"])
    if method == "nli":
        longest = max(len(tokenizer.tokenize(f"This text is about {label}.")) for label in labels)
        budget = model["max_length"] - special_tokens(tokenizer, pair=True) - longest
    else:
        budget = model["max_length"] - special_tokens(tokenizer, pair=False)
    return split_windows(tokenizer, text, budget, max_windows=64)


@pytest.mark.parametrize("method", ["nli", "embedding"])
@pytest.mark.parametrize("multi_label", [False, True])
def test_chunks_score_every_window_and_aggregate(server, method, multi_label):
    text = POLITICS * 12 + SPORTS * 3  # the sports part lies beyond the first window of either model
    windows, dropped = windows_of(server.url, method, text, LABELS)
    assert len(windows) > 1 and not dropped
    chunked = post(server, texts=[text], labels=LABELS, method=method, multi_label=multi_label, long_text="chunks")
    assert chunked.status_code == 200, chunked.text
    result = chunked.json()["results"][0]
    assert result["truncated"] is False and result["text"] == text
    per_window = []  # each window scored on its own, as a short text (3 texts a request: the fixture's limit)
    for start in range(0, len(windows), 3):
        for part in post(server, texts=windows[start:start + 3], labels=LABELS, method=method,
                         multi_label=multi_label).json()["results"]:
            per_window.append([dict(zip(part["labels"], part["scores"]))[label] for label in LABELS])
    per_window = np.array(per_window)
    if multi_label:
        expected = per_window.max(axis=0)
    else:
        z = np.log(per_window).mean(axis=0)
        expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    got = dict(zip(result["labels"], result["scores"]))
    assert [got[label] for label in LABELS] == pytest.approx(expected, abs=1e-5)


def test_chunks_find_a_label_mentioned_late(server):
    text = POLITICS * 12 + SPORTS * 3  # the real encoder: sports appears only after its 256-token window
    truncated = post(server, texts=[text], labels=LABELS, method="embedding", multi_label=True).json()["results"][0]
    chunked = post(server, texts=[text], labels=LABELS, method="embedding", multi_label=True,
                   long_text="chunks").json()["results"][0]
    score = lambda result, label: dict(zip(result["labels"], result["scores"]))[label]  # noqa: E731
    assert truncated["truncated"] and not chunked["truncated"]
    assert score(chunked, "sports") > score(truncated, "sports") + 0.05  # its best window, not the first one
    assert chunked["labels"].index("sports") < truncated["labels"].index("sports")
    assert score(chunked, "politics") == pytest.approx(score(truncated, "politics"), abs=1e-6)  # the first window's
    ensemble = post(server, texts=[text, "Goal!"], labels=LABELS, method="ensemble", long_text="chunks")
    assert ensemble.status_code == 200 and len(ensemble.json()["results"]) == 2
    assert post(server, texts=["a"], labels=LABELS, long_text="pages").status_code == 422


def test_chunks_beyond_the_limits_are_dropped_and_flagged_or_refused(tiny_model_dir, cache_dir):
    settings = Settings(model=str(tiny_model_dir), embedding_model="none", engine="onnxruntime", cache_dir=cache_dir,
                        max_chunks=2, max_queue=20, quantization="none")
    with LiveServer(create_app(settings)) as live:
        live.wait_ready()
        body = {"texts": [POLITICS * 8, "Short."], "labels": LABELS, "long_text": "chunks"}
        results = httpx.post(live.url + "/zero-shot", json=body, timeout=60).json()["results"]
        assert [r["truncated"] for r in results] == [True, False]  # 2 + 1 windows x 3 labels: 9 pairs
        body["texts"] = [POLITICS * 8] * 4  # 8 windows x 3 labels: 24 pairs, over the queue of 20
        refused = httpx.post(live.url + "/zero-shot", json=body, timeout=60)
        assert refused.status_code == 422 and "8 windows, 24 sequences" in refused.text
        assert "ZSC_MAX_QUEUE" in refused.text


def test_concurrent_long_and_short_texts_in_both_modes_never_fail(server):
    # Counting tokens with other settings than the model's call once made the shared fast tokenizer fail with
    # "Already borrowed" under concurrency (500s in benchmarks/load.py); both now run side by side.
    from concurrent.futures import ThreadPoolExecutor

    bodies = [dict(texts=[POLITICS * (1 + i % 8), "Goal!"], labels=LABELS, method=("nli", "embedding", "ensemble")[i % 3],
                   long_text=("truncate", "chunks")[i % 2], multi_label=i % 4 == 0) for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda body: post(server, **body), bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses if r.status_code != 200]


def metric_value(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_metrics_parse_and_count_a_request_just_made(server):
    before = httpx.get(server.url + "/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    assert post(server, texts=["The match ended in a draw."], labels=LABELS, method="nli").status_code == 200
    after = httpx.get(server.url + "/metrics").text
    for name, labels in [("zsc_requests_total", {"endpoint": "/zero-shot", "status": "200"}),
                         ("zsc_request_duration_seconds_count", {"endpoint": "/zero-shot"}),
                         ("zsc_tokenization_duration_seconds_count", {"model": "nli"}),
                         ("zsc_queue_duration_seconds_count", {"model": "nli"})]:
        assert metric_value(after, name, **labels) == metric_value(before.text, name, **labels) + 1, name
    assert metric_value(after, "zsc_input_length_tokens_count", model="nli") >= \
        metric_value(before.text, "zsc_input_length_tokens_count", model="nli") + len(LABELS)
    assert metric_value(after, "zsc_inference_duration_seconds_count", model="nli") > \
        metric_value(before.text, "zsc_inference_duration_seconds_count", model="nli")
    assert metric_value(after, "zsc_batch_size_rows_sum", model="nli") >= \
        metric_value(before.text, "zsc_batch_size_rows_sum", model="nli") + len(LABELS)
    assert metric_value(after, "zsc_model_info", role="nli", engine="onnxruntime") == 1
    assert metric_value(after, "zsc_queue_size", model="nli") == 0
    post(server, texts=["Rain."], labels=["weather-metrics-test"], method="embedding")
    post(server, texts=["Sun."], labels=["weather-metrics-test"], method="embedding")
    final = httpx.get(server.url + "/metrics").text
    assert metric_value(final, "zsc_label_cache_misses_total", model="embedding") >= \
        metric_value(after, "zsc_label_cache_misses_total", model="embedding") + 1
    assert metric_value(final, "zsc_label_cache_hits_total", model="embedding") >= \
        metric_value(after, "zsc_label_cache_hits_total", model="embedding") + 1
    httpx.get(server.url + "/no-such-path")
    assert metric_value(httpx.get(server.url + "/metrics").text, "zsc_requests_total", endpoint="other",
                        status="404") >= 1


@pytest.fixture(scope="module")
def guarded(tiny_model_dir, cache_dir):
    settings = Settings(model=str(tiny_model_dir), embedding_model="none", engine="onnxruntime", cache_dir=cache_dir,
                        api_key="s3cret-key", max_body_bytes=2000, max_concurrent_requests=1, batch_wait_ms=600,
                        body_timeout_s=3, quantization="none")
    with LiveServer(create_app(settings)) as live:
        assert live.wait_ready().status_code == 200  # /ready is open without the key
        yield live


KEY = {"Authorization": "Bearer s3cret-key"}


def test_the_api_key_is_required_except_for_probes(guarded):
    body = {"texts": ["Goal!"], "labels": LABELS}
    missing = httpx.post(guarded.url + "/zero-shot", json=body)
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["detail"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(guarded.url + "/zero-shot", json=body, headers={"Authorization": "Bearer s3cret-kez"})
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert httpx.post(guarded.url + "/zero-shot", json=body, headers={"Authorization": "Basic s3cret-key"}
                      ).status_code == 401
    assert httpx.get(guarded.url + "/metrics").status_code == 401 and httpx.get(guarded.url + "/info").status_code == 401
    assert httpx.get(guarded.url + "/health").status_code == 200 and httpx.get(guarded.url + "/ready").status_code == 200
    assert httpx.post(guarded.url + "/zero-shot", json=body, headers=KEY, timeout=60).status_code == 200
    assert metric_value(httpx.get(guarded.url + "/metrics", headers=KEY).text, "zsc_requests_total",
                        endpoint="/zero-shot", status="401") == 3


def test_a_body_over_the_limit_is_a_413_naming_it(guarded):
    big = {"texts": ["word " * 500], "labels": LABELS}  # ~2.5 kB, over 2,000 bytes
    declared = httpx.post(guarded.url + "/zero-shot", json=big, headers=KEY)
    assert declared.status_code == 413 and "limit of 2000 bytes (ZSC_MAX_BODY_BYTES)" in declared.json()["detail"]
    payload = httpx.Request("POST", "/", json=big).content

    def stream():  # chunked transfer: no Content-Length to check, the bytes are counted as they arrive
        for start in range(0, len(payload), 500):
            yield payload[start:start + 500]

    chunked = httpx.post(guarded.url + "/zero-shot", content=stream(), headers={**KEY, "content-type": "application/json"})
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert chunked.status_code == 413 and "2000 bytes" in chunked.json()["detail"]
    small = httpx.post(guarded.url + "/zero-shot", json={"texts": ["Goal!"], "labels": LABELS}, headers=KEY, timeout=60)
    assert small.status_code == 200


def test_requests_beyond_the_concurrency_limit_get_429_with_retry_after(guarded):
    from concurrent.futures import ThreadPoolExecutor

    body = {"texts": ["Goal!"], "labels": LABELS}  # alone in the micro-batcher: each waits its 600 ms in a slot
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: httpx.post(guarded.url + "/zero-shot", json=body, headers=KEY, timeout=60),
                                range(2)))
    assert sorted(a.status_code for a in answers) == [200, 429], [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["retry-after"] == "1" and "ZSC_MAX_CONCURRENT_REQUESTS" in refused.json()["detail"]
    assert httpx.get(guarded.url + "/health").status_code == 200  # probes are never refused
    assert httpx.post(guarded.url + "/zero-shot", json=body, headers=KEY, timeout=60).status_code == 200  # free again


def test_a_slow_upload_holds_no_slot_and_gets_408(guarded):
    """A client trickling its body a byte at a time: the server's only concurrency slot stays free for the others
    while it trickles (they get 200, not 429), and the slow one gets 408 once ZSC_BODY_TIMEOUT_S (3 s) has passed."""
    import json
    import socket
    import threading

    payload = json.dumps({"texts": ["Goal!"], "labels": LABELS}).encode()
    head = (f"POST /zero-shot HTTP/1.1\r\nHost: 127.0.0.1:{guarded.port}\r\nAuthorization: Bearer s3cret-key\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    slow = socket.create_connection(("127.0.0.1", guarded.port), timeout=30)
    done = threading.Event()

    def trickle():  # one byte every 0.25 s: the whole body would take ~15 s
        try:
            for byte in payload[1:]:
                if done.wait(0.25):
                    return
                slow.sendall(bytes([byte]))
        except OSError:  # the server answered and closed the connection
            pass

    began = time.monotonic()  # before the server can start its clock: refused_after is never under the limit
    slow.sendall(head + payload[:1])
    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        others = [httpx.post(guarded.url + "/zero-shot", json={"texts": [text], "labels": LABELS}, headers=KEY,
                             timeout=60) for text in ("Goal!", "Stocks fell.")]
        served_after = time.monotonic() - began
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
        refused_after = time.monotonic() - began
    finally:
        done.set()
        slow.close()
        trickler.join(10)
    assert [r.status_code for r in others] == [200, 200], [r.text for r in others]
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout", answer[:300]
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    detail = json.loads(body)["detail"]
    assert "ZSC_BODY_TIMEOUT_S" in detail and f"of {len(payload)} announced" in detail
    assert served_after < refused_after and 3 <= refused_after < 15  # served while it trickled; refused on time
    metrics = httpx.get(guarded.url + "/metrics", headers=KEY).text
    assert metric_value(metrics, "zsc_requests_total", endpoint="/zero-shot", status="408") >= 1


def test_sigterm_lets_a_request_in_progress_finish(tiny_model_dir, cache_dir):
    import signal
    import threading

    port = free_port()
    env = {**os.environ, "ZSC_CACHE_DIR": str(cache_dir), "ZSC_MODEL": str(tiny_model_dir), "ZSC_ENGINE": "torch",
           "ZSC_EMBEDDING_MODEL": "none"}
    proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning",
                             "--timeout-graceful-shutdown", "20"], cwd=REPO, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the service exited"
            try:
                if httpx.get(url + "/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        release = threading.Event()

        def slow_body():  # the request is in progress until its body is complete
            yield b'{"texts": ["Goal!"], '
            release.wait(30)
            yield b'"labels": ["sports", "business", "politics"]}'

        answers: list[httpx.Response] = []
        request = threading.Thread(target=lambda: answers.append(httpx.post(
            url + "/zero-shot", content=slow_body(), headers={"content-type": "application/json"}, timeout=60)))
        request.start()
        while metric_value(httpx.get(url + "/metrics").text, "zsc_requests_in_progress") < 2:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert proc.poll() is None  # it waits for the request in progress
        release.set()
        request.join(60)
        assert answers and answers[0].status_code == 200 and len(answers[0].json()["results"]) == 1
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
