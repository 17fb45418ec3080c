"""Serving a student: service.classify and POST /classify over real HTTP, on a student built in the test."""

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.config import Settings

from .conftest import LiveServer

pytestmark = pytest.mark.slow

LABELS = ["World", "Sports", "Business", "Sci/Tech"]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, minilm_dir):
    """A fastText student (random head, MiniLM embeddings) saved and exported as train/finetune.py does."""
    import torch
    from transformers import AutoTokenizer

    from train.students import build_student, export_onnx, save_student

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("student")
    model = build_student("fasttext", labels=LABELS, multi_label=False, base_dir=minilm_dir).eval()
    save_student(model, out, kind="fasttext", labels=LABELS, multi_label=False,
                 tokenizer=AutoTokenizer.from_pretrained(minilm_dir), max_length=64)
    export_onnx(model, out / "model.onnx")
    return out, model


def test_classifier_matches_the_torch_student(student_dir, cache_dir):
    import torch
    from transformers import AutoTokenizer

    from service.classify import load_classifier

    out, model = student_dir
    texts = ["Stocks rallied after the earnings report.", "The keeper saved a penalty.", "ok"]
    classifier = load_classifier("ag", str(out), engine="onnxruntime", cache_dir=cache_dir)
    enc = AutoTokenizer.from_pretrained(out)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = torch.softmax(model(enc["input_ids"], enc["attention_mask"]), -1).numpy()
    np.testing.assert_allclose(classifier.probabilities(texts), want, atol=1e-5)
    assert classifier.labels == LABELS and not classifier.multi_label
    classifier.close()


def test_classify_endpoint(student_dir, cache_dir):
    out, _ = student_dir
    settings = Settings(model="none", embedding_model="none", classifiers={"ag_news": str(out)}, engine="onnxruntime",
                        cache_dir=cache_dir, max_texts=4)
    with LiveServer(create_app(settings)) as live:
        assert live.wait_ready().json()["classifiers"] == ["ag_news"]
        texts = ["Stocks rallied after the earnings report.", "The keeper saved a penalty."]
        body = httpx.post(live.url + "/classify", json={"texts": texts}).json()
        assert body["model"] == "ag_news" and body["engine"] == "onnxruntime" and not body["multi_label"]
        for text, result in zip(texts, body["results"]):
            assert result["text"] == text and sorted(result["labels"]) == sorted(LABELS)
            assert abs(sum(result["scores"]) - 1) < 1e-6 and result["scores"] == sorted(result["scores"], reverse=True)
        info = httpx.get(live.url + "/info").json()
        assert info["classifiers"]["ag_news"]["labels"] == LABELS
        for bad, where in (({"texts": texts, "model": "emotion"}, "no classifier named 'emotion'"),
                           ({"texts": []}, "texts is empty"),
                           ({"texts": ["a"] * 5}, "exceed the limit of 4")):
            response = httpx.post(live.url + "/classify", json=bad)
            assert response.status_code == 422 and where in response.text, response.text
        response = httpx.post(live.url + "/zero-shot", json={"texts": ["a"], "labels": ["x", "y"]})
        assert response.status_code == 422 and "use POST /classify" in response.text


# --- an adapted head (annotate.adaptive) served on the shared sentence encoder -----------------------------------

HEAD_TEXTS = {
    "World": ["The prime minister resigned after the election defeat.", "Troops crossed the border overnight.",
              "The UN called for a ceasefire in the region.", "Protesters filled the capital's main square.",
              "Diplomats met to discuss the peace treaty.", "The president visited flood victims abroad."],
    "Sports": ["The keeper saved a penalty in extra time.", "She won the marathon in record time.",
               "The team clinched the championship title.", "The striker signed a new contract with the club.",
               "Rain delayed the final set at Wimbledon.", "The coach was fired after ten straight losses."],
    "Business": ["Stocks rallied after the earnings report.", "The bank raised interest rates again.",
                 "Oil prices fell as supply grew.", "The company announced a merger worth billions.",
                 "Retail sales slowed in the third quarter.", "Shares of the airline dropped sharply."],
    "Sci/Tech": ["The new chip doubles battery life of phones.", "Astronomers found water on a distant planet.",
                 "A software update fixes the security flaw.", "Researchers sequenced the genome of the wheat.",
                 "The startup released an open source database.", "NASA launched a probe to study the sun."],
}


@pytest.fixture(scope="module")
def embedding_service(cache_dir):
    """The real service with the packaged sentence encoder only (its POST /embed and fingerprint)."""
    settings = Settings(model="none", embedding_model="default", engine="onnxruntime", cache_dir=cache_dir)
    with LiveServer(create_app(settings)) as live:
        assert live.wait_ready(300).status_code == 200
        yield live


def test_adapted_head_is_served_on_the_shared_encoder(embedding_service, cache_dir, tmp_path):
    """A head fitted on /embed's vectors, saved, served by /classify: same scores as in-process (1e-4), the
    encoder not loaded twice; a head of another encoder is refused with a clear reason."""
    import json

    from sklearn.linear_model import LogisticRegression

    from service.head import AdaptiveHead

    texts = [t for group in HEAD_TEXTS.values() for t in group]
    gold = [i for i, group in enumerate(HEAD_TEXTS.values()) for _ in group]
    answer = httpx.post(embedding_service.url + "/embed", json={"texts": texts}, timeout=120).json()
    x = np.asarray(answer["embeddings"], dtype=np.float32)
    model = LogisticRegression(C=10.0, max_iter=500).fit(x, gold)
    encoder = {"model_id": answer["model"], "fingerprint": answer["fingerprint"], "dim": answer["dim"]}
    head = AdaptiveHead(LABELS, model.coef_, model.intercept_, 0.7, encoder, "0123456789abcdef", {"mode": "reviews"})
    head.save(tmp_path / "head")
    probe = ["The central bank cut rates to fight the slowdown.", "The goalkeeper was injured in training.",
             "A new telescope image shows a galaxy merger.", "Rebels seized the northern town."]
    want = AdaptiveHead.load(tmp_path / "head").predict_proba(
        np.asarray(httpx.post(embedding_service.url + "/embed", json={"texts": probe}).json()["embeddings"]))

    settings = Settings(model="none", embedding_model="default", engine="onnxruntime", cache_dir=cache_dir,
                        classifiers={"ag_head": str(tmp_path / "head")})
    app = create_app(settings)
    with LiveServer(app) as live:
        assert live.wait_ready(300).json()["classifiers"] == ["ag_head"]
        body = httpx.post(live.url + "/classify", json={"texts": probe, "model": "ag_head"}, timeout=120).json()
        assert body["model"] == "ag_head" and not body["multi_label"]
        for row, result in zip(want, body["results"]):
            got = dict(zip(result["labels"], result["scores"]))
            np.testing.assert_allclose([got[label] for label in LABELS], row, atol=1e-4)
        assert [LABELS[int(np.argmax(r))] for r in want] == ["Business", "Sports", "Sci/Tech", "World"]
        served = app.state.slot.model
        assert served.classifiers["ag_head"].encoder is served.models["embedding"].classifier.encoder  # one encoder
        info = httpx.get(live.url + "/info").json()["classifiers"]["ag_head"]
        assert info["kind"] == "adaptive-head" and info["labels"] == LABELS and info["revision"] == "0123456789abcdef"

    other = json.loads((tmp_path / "head" / "head.json").read_text())
    other["encoder"]["fingerprint"] = "sha256:not-this-encoder"
    (tmp_path / "head" / "head.json").write_text(json.dumps(other))
    refused = Settings(model="none", embedding_model="default", engine="onnxruntime", cache_dir=cache_dir,
                       classifiers={"ag_head": str(tmp_path / "head")})
    with LiveServer(create_app(refused)) as live:
        ready = live.wait_ready(300)
        assert ready.status_code == 500 and "fitted on embeddings of encoder" in ready.json()["error"], ready.text
