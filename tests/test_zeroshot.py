"""The zero-shot core: templates, label indices, and scores from logits, against hand computation."""

import math

import numpy as np
import pytest

from service.zeroshot import (
    TemplateError,
    contradiction_index,
    entailment_index,
    fill_template,
    scores_from_logits,
    validate_template,
)


def test_fill_template_substitutes_plainly():
    assert fill_template("This text is about {}.", "sports") == "This text is about sports."
    # other braces stay literal; nothing reaches str.format
    assert fill_template("{0.__class__} is {}", "x") == "{0.__class__} is x"
    assert fill_template("About {}.", "{0.__class__.__mro__}") == "About {0.__class__.__mro__}."


@pytest.mark.parametrize("template", ["no placeholder", "{} and {}", "{0.__class__}", "{label}", ""])
def test_templates_without_exactly_one_placeholder_are_rejected(template):
    with pytest.raises(TemplateError, match="exactly one"):
        validate_template(template)


def test_label_indices_are_read_from_label2id():
    assert entailment_index({"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2}) == 2
    assert entailment_index({"entailment": 0, "not_entailment": 1}) == 0
    assert contradiction_index({"entailment": 0, "neutral": 1, "contradiction": 2}, 0) == 2
    # no contradiction label: Hugging Face's rule (0, or -1 when entailment is 0)
    assert contradiction_index({"entailment": 0, "not_entailment": 1}, 0) == -1
    assert contradiction_index({"x": 0, "entailment": 1}, 1) == 0
    with pytest.raises(ValueError, match="no entailment label"):
        entailment_index({"LABEL_0": 0, "LABEL_1": 1})


def test_single_label_scores_are_a_softmax_of_entailment_logits_across_labels():
    logits = np.array([[[0.0, 0.0, 1.0], [5.0, 0.0, 2.0], [0.0, 9.0, 0.0]]])  # 1 text, 3 labels
    scores = scores_from_logits(logits, entailment_id=2, contradiction_id=0, multi_label=False)
    e = [math.exp(1.0), math.exp(2.0), math.exp(0.0)]
    np.testing.assert_allclose(scores[0], [x / sum(e) for x in e], rtol=1e-12)


def test_multi_label_scores_are_entailment_vs_contradiction_per_label():
    logits = np.array([[[1.0, 7.0, 3.0], [4.0, -2.0, 0.5]]])
    scores = scores_from_logits(logits, entailment_id=2, contradiction_id=0, multi_label=True)
    expected = [math.exp(3) / (math.exp(3) + math.exp(1)), math.exp(0.5) / (math.exp(0.5) + math.exp(4))]
    np.testing.assert_allclose(scores[0], expected, rtol=1e-12)


def test_one_label_is_scored_as_multi_label_like_the_pipeline():
    logits = np.array([[[2.0, 0.0, 1.0]], [[0.0, 0.0, 3.0]]])
    single = scores_from_logits(logits, entailment_id=2, contradiction_id=0, multi_label=False)
    multi = scores_from_logits(logits, entailment_id=2, contradiction_id=0, multi_label=True)
    np.testing.assert_array_equal(single, multi)
    assert single[0, 0] < 0.5 < single[1, 0]


def test_large_logits_do_not_overflow():
    logits = np.array([[[0.0, 0.0, 1000.0], [0.0, 0.0, 999.0]]])
    scores = scores_from_logits(logits, entailment_id=2, contradiction_id=0, multi_label=False)
    np.testing.assert_allclose(scores[0], [1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))])


def test_label_hypotheses_put_the_filled_template_first_then_the_descriptions_as_written():
    from service.zeroshot import label_hypotheses

    groups = label_hypotheses(["sports", "business"], "About {}.", {"business": ["Markets moved.", "A deal."]})
    assert groups == [["About sports."], ["About business.", "Markets moved.", "A deal."]]
    assert label_hypotheses(["a"], "{}") == [["a"]]


def test_merge_hypotheses_averages_each_labels_hypotheses_on_any_trailing_shape():
    from service.zeroshot import merge_hypotheses

    raw = np.arange(2 * 4 * 3, dtype=np.float64).reshape(2, 4, 3)  # 2 texts, 4 hypotheses, 3 NLI classes
    merged = merge_hypotheses(raw, [1, 3])
    assert merged.shape == (2, 2, 3)
    np.testing.assert_allclose(merged[:, 0], raw[:, 0])
    np.testing.assert_allclose(merged[:, 1], raw[:, 1:].mean(axis=1))
    cos = np.array([[0.1, 0.2, 0.6]])
    np.testing.assert_allclose(merge_hypotheses(cos, [2, 1]), [[0.15, 0.6]])
    assert merge_hypotheses(cos, [1, 1, 1]) is cos


@pytest.mark.slow
def test_nli_descriptions_score_the_mean_entailment_logits_of_each_labels_hypotheses(tiny_model_dir, cache_dir):
    """A real (tiny, random) NLI model: a described label's logits are the mean of its hypotheses' own pairs."""
    from service.config import Settings
    from service.loader import load_model

    loaded = load_model(Settings(model=str(tiny_model_dir), embedding_model="none", method="nli",
                                 engine="onnxruntime", cache_dir=cache_dir, quantization="none"), role="nli")
    try:
        nli = loaded.classifier
        texts = ["The striker scored twice.", "Shares fell after the report."]
        described = nli.raw(texts, ["sports", "business"], hypothesis_template="This is about {}.",
                            label_descriptions={"business": ["Markets moved.", "A company made a deal."]})
        plain = nli.raw(texts, ["sports"], hypothesis_template="This is about {}.")
        parts = nli.logits([t for t in texts for _ in range(3)],
                           ["This is about business.", "Markets moved.", "A company made a deal."] * 2)
        np.testing.assert_allclose(described[:, 0], plain[:, 0], atol=1e-5)
        np.testing.assert_allclose(described[:, 1], parts.reshape(2, 3, -1).mean(axis=1), atol=1e-5)
        scores = nli.scores(texts, ["sports", "business"], hypothesis_template="This is about {}.",
                            label_descriptions={"business": ["Markets moved."]})
        np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    finally:
        loaded.close()
