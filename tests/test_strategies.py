"""annotate.strategies: review orders on hand-made score matrices."""

from __future__ import annotations

import numpy as np
import pytest

from annotate.strategies import (
    STRATEGIES,
    LeastConfidence,
    Margin,
    RandomOrder,
    TypicalThenLeastConfidence,
    get_strategy,
    typical_rows,
)

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
    assert set(STRATEGIES) == {"least-confidence", "margin", "random", "typiclust"}
    assert isinstance(get_strategy("margin"), Margin)
    with pytest.raises(ValueError, match="unknown strategy 'entropy': use one of least-confidence, margin, random, "
                                         "typiclust"):
        get_strategy("entropy")


def _blobs(sizes=(60, 40, 30, 20), spread=0.05, seed=0):
    """Well separated clusters of the given sizes: their centres, the points, and which cluster each is."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), 8)) * 3
    member = np.repeat(np.arange(len(sizes)), sizes)
    return centres, centres[member] + spread * rng.normal(size=(len(member), 8)), member


def test_typical_rows_take_the_most_typical_record_of_each_uncovered_cluster_largest_first():
    centres, x, member = _blobs()
    chosen = typical_rows(x, np.empty(0, dtype=np.int64), np.arange(len(x)), 4)
    assert sorted(member[chosen]) == [0, 1, 2, 3]  # one per cluster
    for row in chosen:  # the chosen record sits near its cluster's centre: typical, not an outlier
        distances = np.linalg.norm(x[member == member[row]] - centres[member[row]], axis=1)
        assert np.linalg.norm(x[row] - centres[member[row]]) <= np.quantile(distances, 0.5)
    covered = typical_rows(x, np.flatnonzero(member == 0)[:1], np.flatnonzero(member != 0), 2)
    assert set(member[covered]) == {1, 2}  # cluster 0 is covered by a review: the next largest two


def test_typiclust_then_least_confidence_switches_after_the_cold_start():
    _, x, member = _blobs()
    scores = np.full((len(x), 2), 0.5)
    scores[:, 0] = np.linspace(0.5, 0.99, len(x))  # least confident: row 0 first
    strategy = TypicalThenLeastConfidence(cold_start=3).prepare(x)
    first = strategy.select(scores, np.arange(len(x)), 3, np.random.default_rng(0))
    assert len(set(member[first])) == 3  # three clusters covered, not the three least confident rows
    pending = np.setdiff1d(np.arange(len(x)), first)
    then = strategy.select(scores, pending, 2, np.random.default_rng(0))
    assert then.tolist() == LeastConfidence().select(scores, pending, 2, np.random.default_rng(0)).tolist()
    with pytest.raises(RuntimeError, match="call prepare"):
        TypicalThenLeastConfidence().select(scores, np.arange(5), 2, np.random.default_rng(0))
