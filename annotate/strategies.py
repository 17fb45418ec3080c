"""Review orders (query strategies, as in small-text): which pending records people should see next.

Each strategy ranks pending records from the current suggestions' probabilities ``(n, K)``; ``select`` returns
the next ``count`` rows. Argilla shows the same orders through sorting: least confidence is the suggestion score
ascending, margin is the ``margin`` metadata ascending (:func:`annotate.dataset.deep_link`).
"""

from __future__ import annotations

import numpy as np


class QueryStrategy:
    """Base class: ``select(scores, pending, count, rng)`` -> ``count`` rows of ``pending`` to review next."""

    name = "base"

    def priority(self, scores: np.ndarray) -> np.ndarray:
        """``(n,)`` priorities: lower is reviewed first."""
        raise NotImplementedError

    def select(self, scores: np.ndarray, pending: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """The ``count`` rows of ``pending`` (int array of row numbers) with the lowest priority (ties: row order)."""
        if count >= len(pending):
            return pending.copy()
        priority = self.priority(scores[pending])
        return pending[np.argsort(priority, kind="stable")[:count]]


class LeastConfidence(QueryStrategy):
    """Lowest top probability first (Lewis & Gale 1994): the order Argilla's score-ascending sort gives."""

    name = "least-confidence"

    def priority(self, scores: np.ndarray) -> np.ndarray:
        return scores.max(axis=1)


class Margin(QueryStrategy):
    """Smallest gap between the two most probable labels first ("breaking ties", Scheffer et al. 2001)."""

    name = "margin"

    def priority(self, scores: np.ndarray) -> np.ndarray:
        if scores.shape[1] < 2:
            return scores[:, 0]
        top2 = -np.partition(-scores, 1, axis=1)[:, :2]
        return top2[:, 0] - top2[:, 1]


class RandomOrder(QueryStrategy):
    """Uniformly random order: the unbiased baseline every strategy is compared with."""

    name = "random"

    def select(self, scores: np.ndarray, pending: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        if count >= len(pending):
            return pending.copy()
        return np.sort(rng.choice(pending, size=count, replace=False))


STRATEGIES: dict[str, type[QueryStrategy]] = {s.name: s for s in (LeastConfidence, Margin, RandomOrder)}


def get_strategy(name: str) -> QueryStrategy:
    """The strategy called ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}") from None
