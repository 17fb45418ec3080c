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
