"""The embedded models ship inside the package, load offline, and classify real news sensibly: the default
(pruned + int8) teacher, the dense teacher it was pruned from, and the packaged sentence encoder."""

import json

import pytest

from service.sources import DEFAULT_MODEL, DENSE_MODEL, default_model_dir, resolve_model
from train.evaluate import AG_NEWS_LABELS, ZeroShotTask, run_zero_shot_suite

MAX_COMMITTED_MB = 60


def test_embedded_models_fit_the_size_rule_and_the_default_shares_the_dense_base(tmp_path):
    from service.sparse_checkpoint import base_model_dir, is_compact

    models = default_model_dir(DEFAULT_MODEL).parent
    size_mb = sum(f.stat().st_size for f in models.rglob("*") if f.is_file()) / 2**20
    assert size_mb <= MAX_COMMITTED_MB, f"{size_mb:.1f} MB committed under {models}"
    compact = default_model_dir(DEFAULT_MODEL)
    assert is_compact(compact) and base_model_dir(compact) == default_model_dir(DENSE_MODEL).resolve()
    source = resolve_model(DEFAULT_MODEL, cache_dir=tmp_path)
    assert source.compact_path == compact.resolve() and (source.path / "model.safetensors").is_file()
    assert source.config()["label2id"] == {"contradiction": 0, "neutral": 1, "entailment": 2}
    spec = source.quantization()
    assert spec is not None and spec.mode_for("deepsparse") == "integer"


def test_cards_carry_the_runs_numbers():
    dense = default_model_dir(DENSE_MODEL)
    metrics = json.loads((dense / "metrics.json").read_text())
    assert f"{metrics['nli_eval']['mnli_dev_matched']['accuracy']:.4f}" in (dense / "README.md").read_text()
    sparse = default_model_dir(DEFAULT_MODEL)
    metrics = json.loads((sparse / "metrics.json").read_text())
    card = (sparse / "README.md").read_text()
    assert f"{metrics['onnx']['fp32']['sparsity']:.4f}" in card
    for row in metrics["evaluation"]:
        assert f"{row['mnli_m']['accuracy']:.4f}" in card and f"{row['ag_news']['accuracy']:.4f}" in card


@pytest.mark.slow
@pytest.mark.parametrize("model", [DEFAULT_MODEL, DENSE_MODEL])
def test_embedded_teachers_classify_real_ag_news_texts(model, data_dir, cache_dir):
    labels = {label: label for label in AG_NEWS_LABELS}
    task = ZeroShotTask("ag_news", data_dir / "classification" / "ag_news" / "test.jsonl",
                        "This text is about {}.", labels, ("title", "description"))
    [result] = run_zero_shot_suite(model, [task], limit=200, cache_dir=cache_dir)
    assert result["n"] == 200
    # chance is 0.25; the full test split is reported in the model cards
    assert result["accuracy"] > 0.5, result
    assert min(result["prediction_counts"].values()) > 0, "the model predicts every class at least once"


@pytest.mark.slow
def test_default_embedding_method_classifies_real_ag_news_texts(data_dir, cache_dir):
    from train.evaluate import AG_NEWS_DESCRIPTIVE

    task = ZeroShotTask("ag_news", data_dir / "classification" / "ag_news" / "test.jsonl",
                        "This news article is about {}.", AG_NEWS_DESCRIPTIVE, ("title", "description"))
    [result] = run_zero_shot_suite(DEFAULT_MODEL, [task], limit=200, cache_dir=cache_dir, method="embedding")
    assert result["method"] == "embedding" and result["n"] == 200
    # measured on the full split in README's methods table; chance is 0.25
    assert result["accuracy"] > 0.6, result
    assert min(result["prediction_counts"].values()) > 0
