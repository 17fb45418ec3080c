"""pool/uncertainty.py: confidence, margin and entropy against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pool.uncertainty import confidence, entropy, margin, summarize


def test_uncertainty_matches_hand_computed_values():
    scores = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    assert confidence(scores).tolist() == [0.7, 1 / 3, 1.0]
    assert margin(scores) == pytest.approx([0.5, 0.0, 1.0])
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)) / math.log(3)
    assert entropy(scores) == pytest.approx([h, 1.0, 0.0], abs=1e-9)
    multi = np.array([[0.5, 0.5], [0.9, 0.1]])
    hb = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    assert entropy(multi, multi_label=True) == pytest.approx([1.0, hb])
    assert set(summarize(scores)) == {"confidence", "margin", "entropy"}
    with pytest.raises(ValueError, match="shape"):
        confidence(np.array([0.1, 0.9]))
