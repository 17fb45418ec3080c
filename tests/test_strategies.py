"""annotate.strategies: review orders on hand-made score matrices."""

from __future__ import annotations

import numpy as np
import pytest

from annotate.strategies import STRATEGIES, LeastConfidence, Margin, RandomOrder, get_strategy

SCORES = np.array([
    [0.90, 0.05, 0.05],  # 0: confident
    [0.40, 0.35, 0.25],  # 1: low top score, small margin
    [0.50, 0.49, 0.01],  # 2: higher top score, smallest margin
    [0.34, 0.33, 0.33],  # 3: least confident, tiny margin
    [0.70, 0.20, 0.10],  # 4
])


def test_least_confidence_takes_the_lowest_top_scores_among_pending():
    rng = np.random.default_rng(0)
    assert LeastConfidence().select(SCORES, np.arange(5), 2, rng).tolist() == [3, 1]
    assert LeastConfidence().select(SCORES, np.array([0, 2, 4]), 2, rng).tolist() == [2, 4]


def test_margin_breaks_ties_first():
    assert Margin().select(SCORES, np.arange(5), 2, np.random.default_rng(0)).tolist() == [2, 3]


def test_random_order_is_seeded_and_stays_inside_pending():
    pending = np.array([0, 1, 3, 4])
    a = RandomOrder().select(SCORES, pending, 2, np.random.default_rng(7))
    b = RandomOrder().select(SCORES, pending, 2, np.random.default_rng(7))
    assert a.tolist() == b.tolist() and set(a) <= set(pending) and len(set(a)) == 2


def test_asking_for_more_than_pending_returns_all_and_names_resolve():
    assert sorted(Margin().select(SCORES, np.array([1, 4]), 10, np.random.default_rng(0))) == [1, 4]
    assert set(STRATEGIES) == {"least-confidence", "margin", "random"}
    assert isinstance(get_strategy("margin"), Margin)
    with pytest.raises(ValueError, match="unknown strategy 'entropy': use one of least-confidence, margin, random"):
        get_strategy("entropy")
