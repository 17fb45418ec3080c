"""The embedded default models ship inside the package, load offline, and classify real news sensibly."""

import json

import pytest

from service.sources import DEFAULT_MODEL, default_model_dir, resolve_model
from train.evaluate import AG_NEWS_LABELS, ZeroShotTask, run_zero_shot_suite

MAX_COMMITTED_MB = 60


def test_default_model_is_a_small_nli_model_with_its_card():
    source = resolve_model(DEFAULT_MODEL)
    assert source.path == default_model_dir().resolve()
    config = source.config()
    assert config["label2id"] == {"contradiction": 0, "neutral": 1, "entailment": 2}
    size_mb = sum(f.stat().st_size for f in source.path.iterdir() if f.is_file()) / 2**20
    assert size_mb <= MAX_COMMITTED_MB
    metrics = json.loads((source.path / "metrics.json").read_text())
    card = (source.path / "README.md").read_text()
    # the card's numbers are the run's numbers
    mnli = metrics["nli_eval"]["mnli_dev_matched"]["accuracy"]
    assert f"{mnli:.4f}" in card


@pytest.mark.slow
def test_default_model_classifies_real_ag_news_texts(data_dir, cache_dir):
    labels = {label: label for label in AG_NEWS_LABELS}
    task = ZeroShotTask("ag_news", data_dir / "classification" / "ag_news" / "test.jsonl",
                        "This text is about {}.", labels, ("title", "description"))
    [result] = run_zero_shot_suite(DEFAULT_MODEL, [task], limit=200, cache_dir=cache_dir)
    assert result["n"] == 200
    # chance is 0.25; the full test split is reported in the model card
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
