"""Every engine gives the transformers pipeline's numbers (1e-4) on the same fp32 checkpoint."""

import logging
import sys

import numpy as np
import pytest

from service.config import Settings
from service.engines import EngineError, create_engine
from service.loader import load_model
from service.onnx_export import export_onnx, inspect_onnx
from service.sources import resolve_model

TEXTS = [
    "The striker scored twice in the last ten minutes and the home side won the cup.",
    "Shares of the chipmaker fell 8% after it cut its revenue forecast for the third quarter. " * 4,  # truncated
    "ok",
    "Scientists found water ice in a crater near the moon's south pole, NASA said on Tuesday.",
]
LABELS = ["sports", "business", "science and technology", "world politics"]
TEMPLATE = "This news story is about {}."


def pipeline_scores(model_dir, texts, labels, multi_label):
    from transformers import pipeline

    pipe = pipeline("zero-shot-classification", model=str(model_dir), device="cpu")
    out = pipe(texts, candidate_labels=labels, hypothesis_template=TEMPLATE, multi_label=multi_label)
    return [dict(zip(r["labels"], r["scores"])) for r in out]


@pytest.fixture(scope="module", params=["tiny", "minilm"])
def model_dir(request):
    return request.getfixturevalue({"tiny": "tiny_model_dir", "minilm": "minilm_random_head_dir"}[request.param])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["torch", "onnxruntime", "deepsparse"])
def test_scores_match_the_transformers_pipeline(model_dir, engine, cache_dir):
    loaded = load_model(Settings(model=str(model_dir), engine=engine, batch_size=3, cache_dir=cache_dir))
    assert loaded.engine.name == engine
    for multi_label in (False, True):
        expected = pipeline_scores(model_dir, TEXTS, LABELS, multi_label)
        results = loaded.classifier(TEXTS, LABELS, hypothesis_template=TEMPLATE, multi_label=multi_label)
        for text, want, got in zip(TEXTS, expected, results):
            assert got.text == text
            assert got.scores == sorted(got.scores, reverse=True)
            np.testing.assert_allclose(got.scores, [want[label] for label in got.labels], atol=1e-4, rtol=0)
            if not multi_label:
                assert abs(sum(got.scores) - 1) < 1e-6
    loaded.close()


@pytest.mark.slow
def test_premise_only_truncation_keeps_the_hypothesis(tiny_model_dir, cache_dir):
    loaded = load_model(Settings(model=str(tiny_model_dir), engine="onnxruntime", cache_dir=cache_dir))
    assert loaded.classifier.max_length == 48
    long_text = "word " * 500  # ten times the model's 48 tokens
    scores = loaded.classifier.scores([long_text], LABELS, hypothesis_template=TEMPLATE, multi_label=False)
    # were the hypothesis cut, every label would see the same tokens and get the same score
    assert len(set(np.round(scores[0], 6))) == len(LABELS)
    expected = pipeline_scores(tiny_model_dir, [long_text], LABELS, multi_label=False)[0]
    np.testing.assert_allclose(scores[0], [expected[label] for label in LABELS], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_missing_deepsparse_falls_back_to_onnxruntime_with_one_warning(tiny_model_dir, cache_dir, monkeypatch, caplog):
    # A machine without the deepsparse extra: the import must fail. sys.modules[name] = None makes
    # `import deepsparse` raise ImportError exactly as when the package is not installed.
    monkeypatch.setitem(sys.modules, "deepsparse", None)
    source = resolve_model(str(tiny_model_dir))
    with caplog.at_level(logging.WARNING, logger="service.engines"):
        engine = create_engine("deepsparse", source, cache_dir=cache_dir, batch_size=4, max_length=48)
    assert engine.name == "onnxruntime"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "falling back to ONNX Runtime" in warnings[0].getMessage()


@pytest.mark.slow
def test_deepsparse_compile_failure_falls_back(tiny_model_dir, cache_dir, tmp_path, caplog):
    # A graph DeepSparse cannot compile: an ONNX file that is not a model.
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    source = resolve_model(str(broken))
    with caplog.at_level(logging.WARNING, logger="service.engines"), pytest.raises(EngineError):
        create_engine("deepsparse", source, cache_dir=cache_dir, batch_size=4, max_length=48)
    assert any("falling back to ONNX Runtime" in r.getMessage() for r in caplog.records)


def test_unknown_engine_is_refused(tiny_model_dir, cache_dir):
    with pytest.raises(EngineError, match="unknown engine"):
        create_engine("tensorrt", resolve_model(str(tiny_model_dir)), cache_dir=cache_dir, batch_size=4, max_length=48)


def half_sparse_copy(tiny_model_dir, target):
    """The tiny model with the first half of every Linear weight's columns set to zero."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, torch.nn.Linear)):
            layer.weight[:, : layer.weight.shape[1] // 2] = 0
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(target)
    return model


@pytest.mark.slow
def test_auto_keeps_the_engine_it_measured_fastest(tiny_model_dir, cache_dir, tmp_path):
    half_sparse_copy(tiny_model_dir, tmp_path / "half")
    for path in (tiny_model_dir, tmp_path / "half"):
        engine = create_engine("auto", resolve_model(str(path)), cache_dir=cache_dir, batch_size=4, max_length=48)
        selection = engine.selection
        assert set(selection["rows_per_s"]) == {"deepsparse", "onnxruntime"}  # both built and timed
        assert selection["chosen"] == engine.name == max(selection["rows_per_s"], key=selection["rows_per_s"].get)
        assert engine.describe()["auto_selection"] == selection
        engine.close()


@pytest.mark.slow
def test_deepsparse_routes_each_batch_to_the_smallest_bucket(tiny_model_dir, cache_dir, tmp_path):
    from service.engines.deepsparse import DeepSparseEngine, batch_buckets, plan_chunks
    from service.onnx_export import onnx_for

    assert batch_buckets(32) == (8, 32) and batch_buckets(1) == (1,)
    assert plan_chunks(37, (8, 32)) == [(32, 32), (5, 8)]
    graph = onnx_for(resolve_model(str(tiny_model_dir)), cache_dir)
    engine = DeepSparseEngine(graph, work_dir=tmp_path / "ds", batch_size=32, max_length=48)
    reference = create_engine("onnxruntime", resolve_model(str(tiny_model_dir)), cache_dir=cache_dir, batch_size=32,
                              max_length=48)
    rng = np.random.default_rng(0)
    for rows, width in ((3, 20), (37, 40)):
        inputs = {"input_ids": rng.integers(1000, 5000, (rows, width)), "attention_mask": np.ones((rows, width), int),
                  "token_type_ids": np.zeros((rows, width), int)}
        inputs = {k: v.astype(np.int64) for k, v in inputs.items()}
        np.testing.assert_allclose(engine({k: inputs[k] for k in engine.input_names}),
                                   reference({k: inputs[k] for k in reference.input_names}), atol=1e-4)
    assert engine.describe()["compiled_buckets"] == ["8x16", "8x32", "8x48", "32x48"]
    assert not list((tmp_path / "ds").glob("*.onnx"))  # per-bucket copies are deleted once compiled


@pytest.mark.slow
def test_onnx_inspection_measures_sparsity(tiny_model_dir, tmp_path):
    import torch

    model = half_sparse_copy(tiny_model_dir, tmp_path / "half")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    facts = inspect_onnx(export_onnx(tmp_path / "half", tmp_path / "half.onnx"))
    total = sum(m.weight.numel() for m in linears)
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    assert facts["quantization"] == "none"
    assert facts["weight_params"] == total
    assert facts["sparsity"] == pytest.approx(zeros / total, abs=1e-4)


# One arena policy in a fresh interpreter: the resident memory a (32, 256) call leaves behind depends on the C
# allocator's state, which earlier tests in the pytest process change (an in-process server fixes glibc's mmap
# threshold, service/allocator.py), so each policy is measured in a process of its own, set up as the service sets
# itself up (the 1 MiB threshold: without it, glibc's heap kept 24-264 MiB after an ``off`` call in runs here).
ARENA_PROBE = r"""
import sys
import numpy as np
from service.allocator import set_mmap_threshold
from service.engines.onnxruntime import OnnxRuntimeEngine
from service.engines.selection import rss_mb
set_mmap_threshold(1024)  # as the service does at start-up
graph, arena, out = sys.argv[1:4]
rng = np.random.default_rng(0)
big = {"input_ids": rng.integers(1000, 20000, (32, 256)), "attention_mask": np.ones((32, 256), np.int64),
       "token_type_ids": np.zeros((32, 256), np.int64)}
engine = OnnxRuntimeEngine(graph, num_threads=1, arena=arena)
feed = lambda inputs: {k: inputs[k].astype(np.int64) for k in engine.input_names}
engine(feed({k: v[:2, :16] for k, v in big.items()}))
before = rss_mb()
np.save(out, engine(feed(big)))
assert engine.describe()["arena"] == arena
print(rss_mb() - before)
"""


@pytest.mark.slow
def test_onnxruntime_arena_shrink_gives_the_memory_of_a_large_batch_back(minilm_dir, cache_dir, tmp_path):
    """ZSC_ORT_ARENA: the same numbers under every policy; with ``shrink`` a (32, 256) call leaves resident memory
    about where it was, with ``on`` (ONNX Runtime's own default and the service's) its arena keeps the activations;
    ``off`` keeps what the C heap keeps (36 MiB in one run here)."""
    import subprocess

    from service.engines.onnxruntime import OnnxRuntimeEngine
    from service.onnx_export import onnx_for

    graph = onnx_for(resolve_model(str(minilm_dir)), cache_dir, "sentence-embedding")
    grown, outputs = {}, {}
    for arena in ("shrink", "on", "off"):
        out = tmp_path / f"{arena}.npy"
        result = subprocess.run([sys.executable, "-c", ARENA_PROBE, str(graph), arena, str(out)], capture_output=True,
                                text=True, check=True)
        grown[arena] = float(result.stdout.strip().splitlines()[-1])
        outputs[arena] = np.load(out)
    np.testing.assert_allclose(outputs["shrink"], outputs["on"], atol=1e-5)
    np.testing.assert_allclose(outputs["off"], outputs["on"], atol=1e-5)
    # the attention scores alone are 32 x 12 heads x 256 x 256 float32 = 100 MiB
    assert grown["on"] > 100 and grown["shrink"] < 25 and grown["off"] < grown["on"] / 2, grown
    with pytest.raises(EngineError, match="arena policy"):
        OnnxRuntimeEngine(graph, arena="bounded")
