"""service.quantization on real exported graphs: the int8 forms stay close to float32, keep sparsity, and run
on ONNX Runtime and DeepSparse; quantization.json round-trips; missing calibration is a clear error."""

import numpy as np
import pytest

from service.onnx_export import ExportError, inspect_onnx, onnx_for
from service.quantization import (
    QuantizationSpec,
    activation_names,
    calibrate,
    quantize_dynamic,
    quantize_static,
)
from service.sources import resolve_model

pytestmark = pytest.mark.slow

PAIRS = [("The striker scored twice in the final minutes.", "This text is about sports."),
         ("Oil prices rose after OPEC cut production.", "This text is about business."),
         ("NASA launched a probe to Jupiter's moon Europa.", "This text is about science."),
         ("Rebels attacked a convoy near the capital.", "This text is about world news."),
         ("The central bank left interest rates unchanged on Thursday.", "This text is about sports.")] * 4


def feeds(model_dir):
    from transformers import AutoTokenizer

    from train.quantize import feeds as make_feeds

    return list(make_feeds(AutoTokenizer.from_pretrained(model_dir), PAIRS, batch_size=8))


def run(path, batches):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return np.concatenate([session.run(None, {k: v for k, v in b.items() if k in names})[0] for b in batches])


@pytest.fixture(scope="module")
def minilm_graph(minilm_random_head_dir, cache_dir):
    return onnx_for(resolve_model(str(minilm_random_head_dir)), cache_dir)


@pytest.fixture(scope="module")
def teacher_graph(cache_dir):
    """The embedded dense NLI teacher (a real trained model: its logits have a meaningful scale)."""
    from service.sources import DENSE_MODEL

    source = resolve_model(DENSE_MODEL)
    return source, onnx_for(source, cache_dir)


def test_every_int8_form_stays_close_to_float32(teacher_graph, tmp_path):
    source, minilm_graph = teacher_graph
    batches = feeds(source.path)
    ranges = calibrate(minilm_graph, batches)
    import onnx

    assert set(ranges) == set(activation_names(onnx.load(str(minilm_graph))))
    reference = run(minilm_graph, batches)
    scale = np.abs(reference).max()
    for name, build in {
        "qdq": lambda p: quantize_static(minilm_graph, p, ranges, form="qdq"),
        "integer": lambda p: quantize_static(minilm_graph, p, ranges, form="integer"),
        "dynamic": lambda p: quantize_dynamic(minilm_graph, p),
    }.items():
        path = build(tmp_path / f"{name}.onnx")
        out = run(path, batches)
        assert inspect_onnx(path)["quantization"] == "int8", name
        # int8 error: under 15% of the logit range (dynamic's per-call ranges span padding too), and the same
        # decision on most pairs
        assert np.abs(out - reference).max() < 0.15 * scale, name
        assert np.mean(out.argmax(1) == reference.argmax(1)) >= 0.8, name


def test_pruned_zeros_survive_quantization(tiny_model_dir, tmp_path, cache_dir):
    from tests.test_engines import half_sparse_copy

    half_sparse_copy(tiny_model_dir, tmp_path / "half")
    graph = onnx_for(resolve_model(str(tmp_path / "half")), cache_dir)
    batches = feeds(tiny_model_dir)
    ranges = calibrate(graph, batches, method="minmax")
    fp32 = inspect_onnx(graph)["sparsity"]
    assert fp32 > 0.45
    for form in ("qdq", "integer"):
        assert inspect_onnx(quantize_static(graph, tmp_path / f"{form}.onnx", ranges, form=form))["sparsity"] >= fp32
    assert inspect_onnx(quantize_dynamic(graph, tmp_path / "dyn.onnx"))["sparsity"] >= fp32


def test_deepsparse_runs_the_integer_form(minilm_graph, minilm_random_head_dir, tmp_path):
    from service.engines.deepsparse import DeepSparseEngine

    batches = feeds(minilm_random_head_dir)
    path = quantize_static(minilm_graph, tmp_path / "integer.onnx", calibrate(minilm_graph, batches), form="integer")
    engine = DeepSparseEngine(path, work_dir=tmp_path / "ds", batch_size=8, max_length=128)
    batch = batches[0]
    got = engine({k: batch[k] for k in engine.input_names})
    np.testing.assert_allclose(got, run(path, [batch]), atol=0.05)


def test_spec_round_trip_and_errors(tmp_path, tiny_model_dir, cache_dir):
    spec = QuantizationSpec(ranges={"a": (-1.0, 2.0)}, engines={"deepsparse": "integer", "onnxruntime": "dynamic"})
    spec.save(tmp_path)
    loaded = QuantizationSpec.load(tmp_path)
    assert loaded.ranges == {"a": (-1.0, 2.0)} and loaded.mode_for("onnxruntime") == "dynamic"
    assert loaded.mode_for("torch") == "none" and loaded.digest() == spec.digest()
    (tmp_path / "quantization.json").write_text('{"ranges": {}, "engines": {"onnxruntime": "int4"}}')
    with pytest.raises(ValueError, match="unknown int8 mode"):
        QuantizationSpec.load(tmp_path)
    source = resolve_model(str(tiny_model_dir))  # no quantization.json
    with pytest.raises(ExportError, match="needs calibrated activation ranges"):
        onnx_for(source, cache_dir, int8="qdq")
    assert inspect_onnx(onnx_for(source, cache_dir, int8="dynamic"))["quantization"] == "int8"


TEXTS = [p for p, _ in PAIRS]


@pytest.mark.parametrize("kind, config", [("fasttext", {"dim": 32, "buckets": 32768}), ("cnn", {"dim": 128})])
def test_tiny_student_tables_are_stored_in_int8(kind, config, minilm_dir, tmp_path):
    """``gather=True`` (what train/finetune.py sets for a tiny student) stores the word (and fastText's bigram)
    tables in int8 with a scale per row: the file shrinks to under 30% of float32 (before this pass the int8 file
    was the float32 one's size: 8.11 / 8.11 MB for fastText) and the logits stay within the rounding bound."""
    import onnx
    import torch
    from transformers import AutoTokenizer

    from service.quantization import build_int8
    from train.quantize import feeds as make_feeds
    from train.students import build_student, export_onnx

    torch.manual_seed(0)
    student = build_student(kind, labels=["world", "sports", "business", "science"], multi_label=False,
                            base_dir=minilm_dir, hyperparameters=config)
    with torch.no_grad():  # a classifier with logits of a trained student's scale (a fresh one's are ~0.1)
        student.classifier.weight.mul_(500.0)
    fp32 = export_onnx(student, tmp_path / "model.onnx")
    batches = list(make_feeds(AutoTokenizer.from_pretrained(minilm_dir), TEXTS, batch_size=8))
    ranges = calibrate(fp32, batches)
    plain = build_int8(fp32, tmp_path / "plain.onnx", "qdq", QuantizationSpec(ranges=ranges))
    tables = build_int8(fp32, tmp_path / "tables.onnx", "qdq", QuantizationSpec(ranges=ranges, gather=True))
    assert plain.stat().st_size > 0.95 * fp32.stat().st_size  # the Linear/Conv weights are a small part
    assert tables.stat().st_size < 0.30 * fp32.stat().st_size
    graph = onnx.load(str(tables))
    int8_tables = {i.name for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2
                   and i.dims[0] >= 30000}
    assert len(int8_tables) == (2 if kind == "fasttext" else 1)
    assert not [i.name for i in graph.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2
                and i.dims[0] >= 30000 and i.dims[1] > 1]  # no float table left behind (only the row scales)
    reference, got = run(fp32, batches), run(tables, batches)
    assert np.abs(reference).max() > 1.0
    assert np.abs(got - reference).max() < 0.02 * np.abs(reference).max()
    assert (got.argmax(1) == reference.argmax(1)).all()
    dynamic = build_int8(fp32, tmp_path / "dynamic.onnx", "dynamic", QuantizationSpec(ranges=ranges, gather=True))
    assert dynamic.stat().st_size < 0.30 * fp32.stat().st_size


def test_gather_flag_round_trips_and_keeps_old_digests(tmp_path):
    spec = QuantizationSpec(ranges={"x": (-1.0, 2.5)})
    assert spec.digest() == "9550433c"  # the digest before the flag existed: teachers' cached graphs stay valid
    tables = QuantizationSpec(ranges={"x": (-1.0, 2.5)}, gather=True)
    assert tables.digest() != spec.digest()
    tables.save(tmp_path)
    assert QuantizationSpec.load(tmp_path).gather is True
    spec.save(tmp_path / "plain")
    assert QuantizationSpec.load(tmp_path / "plain").gather is False


@pytest.mark.parametrize("flags, machine, saturates", [
    (["avx2", "fma"], "x86_64", True),  # AVX2 only: vpmaddubsw pairs products into int16
    (["avx2", "avx512f", "avx512_vnni"], "x86_64", False),
    (["avx2", "avx_vnni"], "x86_64", False),
    (["avx2", "amx_int8"], "x86_64", False),
    ([], "aarch64", False),
])
def test_which_cpus_saturate_int8_kernels(flags, machine, saturates):
    from service.quantization import saturating_int8_cpu

    assert saturating_int8_cpu(flags, machine) is saturates


@pytest.mark.parametrize("saturating", [True, False])
def test_build_spec_serves_int8_only_when_faithful_and_tries_seven_bits_where_kernels_saturate(
        teacher_graph, monkeypatch, saturating):
    """The CPU fact is replaced (the only mock here: the test machine's CPU cannot be chosen), and so are the
    fidelity bounds, to make every int8 graph stray: on a saturating CPU the static graph is built again with 7-bit
    weights (``qdq_8bit`` keeps the first measurement) and the spec keeps whichever was closer to float32; float32
    is served either way. With bounds nothing misses, no second graph is built and the weights stay 8-bit."""
    from transformers import AutoTokenizer

    import service.quantization as quantization
    import train.quantize as quantize

    source, graph = teacher_graph
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    monkeypatch.setattr(quantization, "saturating_int8_cpu", lambda *a: saturating)
    monkeypatch.setattr(quantize, "MIN_COSINE", 2.0)
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 2.0)
    spec, measured = quantize.build_spec(graph, tokenizer, PAIRS, timing_examples=len(PAIRS))
    assert spec.engines["onnxruntime"] == "none" and measured["onnxruntime_choice"] == "none"
    assert ("qdq_8bit" in measured["onnxruntime_fidelity"]) is saturating
    if saturating:
        fid = measured["onnxruntime_fidelity"]
        if spec.reduce_range:  # 7-bit weights kept: they were closer to float32
            assert fid["qdq"]["cosine"] > fid["qdq_8bit"]["cosine"]
        else:  # not closer: the 8-bit measurement stands
            assert fid["qdq"] == fid["qdq_8bit"]
    else:
        assert not spec.reduce_range
    monkeypatch.setattr(quantize, "MIN_COSINE", -1.0)
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", -1.0)
    spec, measured = quantize.build_spec(graph, tokenizer, PAIRS, timing_examples=len(PAIRS))
    assert "qdq_8bit" not in measured["onnxruntime_fidelity"] and not spec.reduce_range
    rates = measured["onnxruntime_rows_per_s"]
    assert spec.engines["onnxruntime"] == ("qdq" if rates["qdq"] > rates["none"] else "none")


def test_fidelity_tells_a_faithful_int8_graph_from_a_broken_one(teacher_graph, tmp_path):
    from train.quantize import fidelity, ort_run

    source, graph = teacher_graph
    batches = feeds(source.path)
    rate, reference = ort_run(graph, batches, repeats=1)
    assert rate > 0 and sum(len(r) for r in reference) == len(PAIRS)
    _, int8 = ort_run(quantize_static(graph, tmp_path / "qdq.onnx", calibrate(graph, batches), form="qdq",
                                      reduce_range=True), batches, repeats=1)
    good = fidelity(reference, int8)
    assert good["faithful"] and good["agreement"] >= 0.95 and good["cosine"] >= 0.98
    shuffled = [r[::-1] * np.array([1.0, -1.0, 1.0])[: r.shape[1]] for r in reference]  # other rows' decisions
    bad = fidelity(reference, shuffled)
    assert not bad["faithful"] and bad["agreement"] < 0.95
    embeddings = [np.random.default_rng(0).normal(size=(8, 384))]
    assert fidelity(embeddings, embeddings)["faithful"] and fidelity(embeddings, embeddings)["agreement"] is None
    assert not fidelity(embeddings, [np.random.default_rng(1).normal(size=(8, 384))])["faithful"]
