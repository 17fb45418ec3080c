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
