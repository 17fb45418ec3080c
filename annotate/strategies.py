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


def typical_rows(embeddings: np.ndarray, labeled: np.ndarray, candidates: np.ndarray, count: int, seed: int = 0,
                 neighbours: int = 20) -> np.ndarray:
    """TypiClust's selection (Hacohen, Dekel and Weinshall 2022, "Active Learning on a Budget: Opposite Strategies
    Suit High and Low Budgets", ICML, algorithm 1): cluster the pool into ``len(labeled) + count`` clusters
    (k-means), take the ``count`` largest clusters that hold no labeled record, and from each the most typical
    candidate: the one with the highest typicality, the inverse mean distance to its ``neighbours`` nearest
    neighbours in its cluster.

    Args:
        embeddings: ``(n, d)`` the whole pool's embeddings.
        labeled: row numbers already reviewed (their clusters are covered).
        candidates: row numbers that may be chosen (pending).
        count: rows to choose.

    Returns:
        Up to ``count`` distinct rows of ``candidates`` (fewer only when the pool has fewer uncovered clusters than
        asked and no candidate is left).
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n = len(embeddings)
    if count <= 0 or not len(candidates):
        return np.empty(0, dtype=np.int64)
    clusters = int(min(n, len(labeled) + count))
    x = np.asarray(embeddings, dtype=np.float32)
    kmeans = (KMeans(clusters, n_init=1, random_state=seed) if n <= 10_000 else
              MiniBatchKMeans(clusters, n_init=3, random_state=seed, batch_size=4096))
    assignment = kmeans.fit_predict(x)
    covered = set(assignment[labeled].tolist())
    allowed = np.zeros(n, dtype=bool)
    allowed[candidates] = True
    sizes = np.bincount(assignment, minlength=clusters)
    chosen: list[int] = []
    for cluster in np.argsort(-sizes, kind="stable"):
        if len(chosen) == count:
            break
        if int(cluster) in covered:
            continue
        members = np.flatnonzero(assignment == cluster)
        pickable = members[allowed[members]]
        if not len(pickable):
            continue
        k = min(neighbours, len(members) - 1)
        if k < 1:
            chosen.append(int(pickable[0]))
            continue
        squared = ((x[pickable] ** 2).sum(1)[:, None] + (x[members] ** 2).sum(1)[None, :]
                   - 2.0 * x[pickable] @ x[members].T)
        d = np.sqrt(np.clip(squared, 0.0, None))
        mean_knn = np.sort(d, axis=1)[:, 1:k + 1].mean(axis=1)  # column 0 is the row itself
        chosen.append(int(pickable[np.argmin(mean_knn)]))
    if len(chosen) < count:  # more asked than uncovered clusters: the rest in row order
        rest = np.setdiff1d(candidates, chosen)
        chosen += rest[: count - len(chosen)].tolist()
    return np.asarray(chosen, dtype=np.int64)


class TypicalThenLeastConfidence(QueryStrategy):
    """Coverage first, then uncertainty: the first ``cold_start`` reviews are TypiClust's typical records of
    uncovered clusters of the pool's embeddings (:func:`typical_rows`), later ones the least confident
    (:class:`LeastConfidence`). At tiny budgets uncertainty picks the hardest, least typical records, which teach a
    head little (Hacohen et al. 2022 find typical-first wins below a few examples a class, uncertainty above).

    Needs the pool's embeddings: call :meth:`prepare` before :meth:`select`. ``cold_start``: reviews of the first
    phase; chosen on the tune halves of the dev tasks (docs/adaptive.md "Cold start").
    """

    name = "typiclust"

    def __init__(self, cold_start: int = 50, seed: int = 0) -> None:
        self.cold_start = cold_start
        self.seed = seed
        self.embeddings: np.ndarray | None = None

    def prepare(self, embeddings: np.ndarray, seed: int | None = None) -> "TypicalThenLeastConfidence":
        """Give the strategy the whole pool's ``(n, d)`` embeddings (row numbers as in :meth:`select`) and, when
        given, the seed of its k-means."""
        self.embeddings = np.asarray(embeddings)
        if seed is not None:
            self.seed = seed
        return self

    def priority(self, scores: np.ndarray) -> np.ndarray:
        return scores.max(axis=1)

    def select(self, scores: np.ndarray, pending: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """Rows not in ``pending`` count as reviewed. While fewer than ``cold_start`` are, typical rows fill the
        batch up to ``cold_start``; the rest of the batch is least-confident.

        Raises:
            RuntimeError: :meth:`prepare` was not called.
        """
        if self.embeddings is None:
            raise RuntimeError("TypicalThenLeastConfidence needs the pool's embeddings: call prepare() first")
        if count >= len(pending):
            return pending.copy()
        labeled = np.setdiff1d(np.arange(len(scores)), pending)
        typical = typical_rows(self.embeddings, labeled, pending, min(count, max(0, self.cold_start - len(labeled))),
                               seed=self.seed)
        rest = count - len(typical)
        if rest <= 0:
            return typical
        left = np.setdiff1d(pending, typical)
        return np.concatenate([typical, LeastConfidence().select(scores, left, rest, rng)])


STRATEGIES: dict[str, type[QueryStrategy]] = {s.name: s for s in (LeastConfidence, Margin, RandomOrder,
                                                                   TypicalThenLeastConfidence)}


def get_strategy(name: str) -> QueryStrategy:
    """The strategy called ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}") from None
