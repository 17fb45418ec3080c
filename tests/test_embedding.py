"""The embedding method: sentence-transformers parity on every engine, pooling, the label cache, calibration."""

import json
import shutil
import warnings

import numpy as np
import pytest

from service.calibration import Calibration
from service.config import Settings
from service.embedding import EmbeddingClassifier, SentenceEncoder
from service.loader import load_model
from service.pooling import PoolingConfig, pool_numpy, read_pooling_config

TEXTS = [
    "The striker scored twice in the final minutes.",
    "Shares of the chip maker fell after its quarterly results.",
    "Rain",
    " ".join(["The committee discussed the budget, the schedule and the new building at length."] * 30),  # > 256 tokens
]
LABELS = ["sports", "business", "politics", "science and technology"]
TEMPLATE = "This text is about {}."


def embedding_settings(model_dir, cache_dir, engine: str, quantization: str = "none", **extra) -> Settings:
    """Float32 unless told: parity with sentence-transformers is a float32 promise (int8 is tested below)."""
    return Settings(model="none", method="embedding", embedding_model=str(model_dir), engine=engine,
                    cache_dir=cache_dir, batch_size=3, quantization=quantization, **extra)


@pytest.fixture(scope="module")
def reference(minilm_dir):
    """sentence-transformers' own embeddings of TEXTS and the hypotheses: the semantics the method promises."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    hypotheses = [TEMPLATE.format(label) for label in LABELS]
    return model.encode(TEXTS, normalize_embeddings=True), model.encode(hypotheses, normalize_embeddings=True)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["torch", "onnxruntime", "deepsparse"])
def test_embeddings_match_sentence_transformers_on_every_engine(engine, minilm_dir, cache_dir, reference):
    loaded = load_model(embedding_settings(minilm_dir, cache_dir, engine), role="embedding")
    try:
        assert loaded.engine.name == engine
        assert loaded.info["max_length"] == 256 and loaded.info["pooling"] == "mean"  # sentence_bert_config.json
        texts, hypotheses = reference
        got = loaded.classifier.encoder.encode(TEXTS)
        np.testing.assert_allclose(got, texts, atol=1e-4)  # includes the truncated 300-token text
        scores = loaded.classifier.raw(TEXTS, LABELS, hypothesis_template=TEMPLATE)
        np.testing.assert_allclose(scores, texts @ hypotheses.T, atol=1e-4)
    finally:
        loaded.close()


@pytest.mark.slow
@pytest.mark.parametrize("engine, form", [("onnxruntime", "qdq"), ("deepsparse", "integer")])
def test_the_shipped_int8_form_stays_close_to_float32(engine, form, minilm_dir, cache_dir, reference):
    """The packaged MiniLM is served in int8 by default: its ranges ship in service/models/quantization/."""
    loaded = load_model(embedding_settings(minilm_dir, cache_dir, engine, quantization="auto"), role="embedding")
    try:
        assert loaded.engine.int8 == form
        texts, hypotheses = reference
        got = loaded.classifier.encoder.encode(TEXTS)
        assert np.sum(got * texts, axis=1).min() > 0.97  # cosine to the float32 embedding of each text
        scores = loaded.classifier.raw(TEXTS, LABELS, hypothesis_template=TEMPLATE)
        # cosine similarities: int8 moves them by up to ~0.03 here (accuracy on AG News / emotion: README)
        np.testing.assert_allclose(scores, texts @ hypotheses.T, atol=0.05)
    finally:
        loaded.close()


@pytest.fixture(scope="module")
def token_state_graph_dir(tmp_path_factory, minilm_dir):
    """MiniLM with a shipped ONNX graph that outputs token states (as hub repos ship ``onnx/model.onnx``)."""
    import torch
    from transformers import AutoModel

    path = tmp_path_factory.mktemp("minilm-token-states")
    for item in minilm_dir.iterdir():
        if item.name != "model.safetensors":  # ONNX only: the engines must use the shipped graph
            (shutil.copytree if item.is_dir() else shutil.copy)(item, path / item.name)
    model = AutoModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    (path / "onnx").mkdir()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices (chosen on purpose: opset 14)
        torch.onnx.export(model, tuple(torch.ones((2, 8), dtype=torch.int64) for _ in names), str(path / "onnx" / "model.onnx"),
                          input_names=names, output_names=["last_hidden_state"], opset_version=14, dynamo=False,
                          dynamic_axes={n: {0: "b", 1: "s"} for n in names} | {"last_hidden_state": {0: "b", 1: "s"}})
    return path


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["onnxruntime", "deepsparse"])
def test_a_shipped_token_state_graph_is_pooled_in_numpy(engine, token_state_graph_dir, cache_dir, reference):
    loaded = load_model(embedding_settings(token_state_graph_dir, cache_dir, engine), role="embedding")
    try:
        assert loaded.source.onnx_path is not None and not loaded.source.has_torch_weights
        np.testing.assert_allclose(loaded.classifier.encoder.encode(TEXTS), reference[0], atol=1e-4)
    finally:
        loaded.close()


def test_pool_numpy_masks_padding_and_normalises():
    states = np.array([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]], dtype=np.float32)  # last position is padding
    mask = np.array([[1, 1, 0]])
    mean = pool_numpy(states, mask, PoolingConfig(mode="mean"))
    np.testing.assert_allclose(mean, [[2 / np.hypot(2, 2), 2 / np.hypot(2, 2)]], rtol=1e-6)
    np.testing.assert_allclose(pool_numpy(states, mask, PoolingConfig(mode="cls", normalize=False)), [[1.0, 0.0]])
    np.testing.assert_allclose(pool_numpy(states, mask, PoolingConfig(mode="max", normalize=False)), [[3.0, 4.0]])


def test_pooling_config_is_read_from_the_sentence_transformers_directory(minilm_dir, tmp_path):
    assert read_pooling_config(minilm_dir) == PoolingConfig(mode="mean", normalize=True, max_seq_length=256)
    assert read_pooling_config(tmp_path) == PoolingConfig()  # a plain HF encoder: mean pooling
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling",
                                                         "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert read_pooling_config(tmp_path).mode == "cls"
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_sqrt_len_tokens": True}))
    with pytest.raises(ValueError, match="supported: one of mean, cls, max"):
        read_pooling_config(tmp_path)


class CountingEngine:
    """A stand-in engine that embeds each sequence as a deterministic vector and counts the rows it ran.

    Used only where the test is about the cache's bookkeeping, not about numbers from a model.
    """

    input_names = ("input_ids", "attention_mask")

    def __init__(self):
        self.rows = 0

    def __call__(self, inputs):
        self.rows += len(inputs["input_ids"])
        ids = inputs["input_ids"].astype(np.float32) * inputs["attention_mask"]
        return np.stack([ids.sum(axis=1), ids.max(axis=1), np.ones(len(ids))], axis=1)


def test_label_embeddings_are_cached_lru_and_reused(minilm_dir):
    from transformers import AutoTokenizer

    engine = CountingEngine()
    encoder = SentenceEncoder(AutoTokenizer.from_pretrained(minilm_dir), engine, max_length=64, batch_size=8)
    method = EmbeddingClassifier(encoder, cache_size=3)
    first = method.raw(["a text"], LABELS[:2], hypothesis_template=TEMPLATE)
    assert engine.rows == 3 and method.cache_info() == {"size": 2, "max_size": 3, "hits": 0, "misses": 2}
    again = method.raw(["a text"], LABELS[:2], hypothesis_template=TEMPLATE)
    assert engine.rows == 4  # only the text was encoded again
    np.testing.assert_array_equal(first, again)
    method.raw(["a text"], LABELS[2:], hypothesis_template=TEMPLATE)  # 2 more hypotheses: the oldest is evicted
    assert len(method.cache) == 3 and TEMPLATE.format(LABELS[0]) not in method.cache
    method.raw(["a text"], LABELS[:1], hypothesis_template="Topic: {}")  # another template is another key
    assert method.cache_info()["misses"] == 5


def test_calibration_turns_similarities_into_probabilities(minilm_dir):
    from transformers import AutoTokenizer

    encoder = SentenceEncoder(AutoTokenizer.from_pretrained(minilm_dir), CountingEngine(), max_length=64)
    method = EmbeddingClassifier(encoder, calibration=Calibration(temperature=0.05, binary_scale=8.0, binary_bias=-3.0))
    cos = np.array([[0.30, 0.20, 0.10]])
    single = method.probabilities(cos, multi_label=False)
    np.testing.assert_allclose(single, np.exp(cos / 0.05) / np.exp(cos / 0.05).sum(), rtol=1e-12)
    np.testing.assert_allclose(method.probabilities(cos, multi_label=True), 1 / (1 + np.exp(-(8.0 * cos - 3.0))), rtol=1e-12)
    one_label = method.scores(["a text"], ["sports"], hypothesis_template=TEMPLATE)  # one label: scored multi-label
    assert one_label.shape == (1, 1) and 0 < one_label[0, 0] < 1


@pytest.mark.slow
def test_descriptions_average_the_cosines_of_a_labels_hypotheses(minilm_dir, cache_dir):
    """The real encoder: a label with descriptions scores the mean cosine of its filled template and descriptions."""
    loaded = load_model(embedding_settings(minilm_dir, cache_dir, "onnxruntime"), role="embedding")
    try:
        method = loaded.classifier
        described = method.raw(TEXTS, LABELS[:2], hypothesis_template=TEMPLATE,
                               label_descriptions={LABELS[1]: ["Stock markets and company earnings."]})
        text_vectors = method.encoder.encode(TEXTS).astype(np.float64)
        h = method.encoder.encode([TEMPLATE.format(LABELS[0]), TEMPLATE.format(LABELS[1]),
                                   "Stock markets and company earnings."]).astype(np.float64)
        np.testing.assert_allclose(described[:, 0], text_vectors @ h[0], atol=1e-5)
        np.testing.assert_allclose(described[:, 1], (text_vectors @ h[1] + text_vectors @ h[2]) / 2, atol=1e-5)
    finally:
        loaded.close()
