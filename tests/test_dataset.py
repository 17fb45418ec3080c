"""annotate/dataset.py: record ids and suggestion values."""

from __future__ import annotations

import numpy as np

from annotate.dataset import record_id, suggestion_value


def test_record_ids_depend_on_content_and_id_column_only():
    assert record_id("a text") == record_id("a text") != record_id("a text", "7")
    assert record_id("a text", "7") != record_id("a text", "8") and len(record_id("x")) == 32


def test_suggestions_single_and_multi_label():
    labels = ["a", "b", "c"]
    assert suggestion_value(np.array([0.2, 0.5, 0.3]), labels, False) == ("b", 0.5)
    value, score = suggestion_value(np.array([0.6, 0.9, 0.1]), labels, True, threshold=0.5)
    assert value == ["b", "a"] and score == [0.9, 0.6]
    assert suggestion_value(np.array([0.1, 0.2, 0.3]), labels, True) == (["c"], [0.3])
    # per-label thresholds (the one-vs-rest head's): "a" passes at 0.6 >= 0.55, "b" fails 0.9 < 0.95
    value, _ = suggestion_value(np.array([0.6, 0.9, 0.1]), labels, True, threshold=np.array([0.55, 0.95, 0.5]))
    assert value == ["a"]
    # none passes: the label closest to its threshold in logits (c: 0.3 against 0.35), not the top score (b)
    value, _ = suggestion_value(np.array([0.1, 0.5, 0.3]), labels, True, threshold=np.array([0.5, 0.9, 0.35]))
    assert value == ["c"]
