"""``suspects``: reviewed labels that look wrong, found with confident learning on out-of-fold probabilities.

People make mistakes: a mis-click, a label read too fast, guidelines understood differently. Each review also trains
the adapted head (:mod:`annotate.adaptive`), so a wrong one costs twice. This module ranks the reviewed records by
how likely their submitted label is wrong:

1. **Out-of-fold probabilities** (:func:`out_of_fold_probabilities`) from the *same* head the loop serves: the
   reviewed records are split into stratified folds (the loop's own :func:`annotate.adaptive._folds`), and for each
   fold :func:`annotate.adaptive.adapt` is fitted on the pool (pseudo-labels) and every *other* review, exactly as
   ``refresh`` fits it, and predicts the held-out fold's records. The held-out records are also kept out of the
   pseudo-labels, so no prediction has seen its own record's label, human or pseudo.
2. **One label per record** (the usual case): confident learning (Northcutt, Jiang & Chuang 2021, "Confident
   Learning: Estimating Uncertainty in Dataset Labels", JAIR 70) through cleanlab:
   ``cleanlab.filter.find_label_issues`` (its default ``prune_by_noise_rate``: estimate the joint distribution of
   given and true labels from per-class confidence thresholds, then flag, per off-diagonal cell, that many records
   with the largest margin against their given label) decides which records are *flagged*;
   ``cleanlab.rank.get_label_quality_scores`` (self-confidence: the out-of-fold probability of the given label)
   gives the score, ``suspect = 1 - quality`` in [0, 1], higher = more likely wrong.
3. **Several responses per record** (several annotators): CROWDLAB (Goh, Tkachenko & Mueller 2022, "CROWDLAB:
   Supervised learning to infer consensus labels and quality scores for data with multiple annotators", NeurIPS
   2022 Human in the Loop Learning workshop) through ``cleanlab.multiannotator.get_label_quality_multiannotator``:
   a consensus label per record weighing each annotator by its estimated quality and the head by its accuracy;
   ``suspect = 1 - consensus quality``; flagged = ``find_label_issues`` on the consensus labels; and a quality
   score per annotator.

The result (:class:`SuspectReport`) holds, per reviewed record, the score, whether it is flagged and the label the
out-of-fold head prefers; and summaries per label and per annotator. ``python -m annotate suspects`` writes the
score into the records' metadata ``suspect`` in Argilla (:mod:`annotate.suspects_argilla`); ``python -m annotate
simulate --noise``
flips a share of the simulated reviews and measures the detection against the flips (:func:`detection_metrics`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

#: Float metadata (0-1, visible) written on reviewed records: how likely their submitted label is wrong.
SUSPECT = "suspect"
#: Fewer reviewed records than this: no detection (each fold must still train a head on the others).
MIN_REVIEWS = 20
#: cleanlab's ``find_label_issues`` rule that decides which records are flagged (its default).
FILTER_BY = "prune_by_noise_rate"
#: The rules ``simulate --noise`` also measures, side by side, on the same out-of-fold probabilities.
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")


class SuspectsError(ValueError):
    """Bad input: the detection cannot run as asked (too few reviews, a single reviewed label, unknown dataset)."""


@dataclass
class SuspectReport:
    """Label-issue detection on the reviewed records of one pool.

    Arrays have one entry per reviewed record, in the order of ``rows``.

    Attributes:
        labels: the ``K`` class names.
        rows: ``(n,)`` pool row of each reviewed record.
        given: ``(n,)`` the label index the loop trains on (the first submitted response).
        score: ``(n,)`` suspect score in [0, 1]: ``1 - `` cleanlab's label quality (of the given label, or of the
            consensus with several annotators); higher = more likely wrong.
        flagged: ``(n,)`` bool, cleanlab's ``find_label_issues`` verdict.
        suggested: ``(n,)`` argmax of the out-of-fold probabilities: the label the head would give.
        probabilities: ``(n, K)`` out-of-fold probabilities.
        method: ``"confident-learning"`` (one label per record) or ``"crowdlab"`` (several annotators).
        consensus: ``(n,)`` CROWDLAB's consensus label index (``None`` with one label per record).
        annotators: ``(n,)`` the annotator of the given label (``None`` when unknown).
        annotator_stats: per annotator, cleanlab's ``annotator_quality``, ``agreement_with_consensus`` and
            ``worst_class`` (CROWDLAB only).
        oof_accuracy: share of records whose given label is the out-of-fold argmax.
        seconds: wall time of the detection (out-of-fold fits + cleanlab).
    """

    labels: list[str]
    rows: np.ndarray
    given: np.ndarray
    score: np.ndarray
    flagged: np.ndarray
    suggested: np.ndarray
    probabilities: np.ndarray
    method: str
    consensus: np.ndarray | None = None
    annotators: list | None = None
    annotator_stats: dict = field(default_factory=dict)
    oof_accuracy: float = 0.0
    seconds: float = 0.0

    def order(self) -> np.ndarray:
        """Positions (into the arrays) by descending suspect score; ties by pool row."""
        return np.lexsort((self.rows, -self.score))

    def per_label(self) -> dict[str, dict]:
        """``{label: {"reviewed", "flagged", "flagged_share", "suggested_instead"}}`` by the given label;
        ``suggested_instead``: how often each other label is what the head prefers for the flagged records."""
        out = {}
        for k, label in enumerate(self.labels):
            mine = self.given == k
            flagged = mine & self.flagged
            instead = Counter(self.labels[j] for j in self.suggested[flagged] if j != k)
            out[label] = {"reviewed": int(mine.sum()), "flagged": int(flagged.sum()),
                          "flagged_share": float(flagged.sum() / mine.sum()) if mine.any() else None,
                          "suggested_instead": dict(instead.most_common())}
        return out

    def per_annotator(self) -> dict[str, dict]:
        """``{annotator: {"reviewed", "flagged", "flagged_share", ...}}`` (with CROWDLAB, also cleanlab's
        ``annotator_quality``, ``agreement_with_consensus``, ``worst_class``)."""
        if self.annotators is None:
            return {}
        out = {}
        for name in sorted({str(a) for a in self.annotators}):
            mine = np.array([str(a) == name for a in self.annotators])
            flagged = int((mine & self.flagged).sum())
            out[name] = {"reviewed": int(mine.sum()), "flagged": flagged,
                         "flagged_share": flagged / int(mine.sum()), **self.annotator_stats.get(name, {})}
        for name, stats in self.annotator_stats.items():  # annotators whose responses are never the first one
            out.setdefault(name, {"reviewed": 0, "flagged": 0, "flagged_share": None, **stats})
        return out

    def summary(self) -> dict:
        """JSON-able summary: counts, accuracy, per label, per annotator."""
        return {"method": self.method, "reviewed": int(len(self.rows)), "flagged": int(self.flagged.sum()),
                "oof_accuracy": round(self.oof_accuracy, 4), "seconds": round(self.seconds, 3),
                "per_label": self.per_label(), "per_annotator": self.per_annotator()}


# ---------------------------------------------------------------------------------------------------------------
# Out-of-fold probabilities from the loop's head
# ---------------------------------------------------------------------------------------------------------------
def out_of_fold_probabilities(embeddings: np.ndarray, zero_shot: np.ndarray, labels, reviewed: dict[int, int], *,
                              discarded=(), config=None, pseudo: tuple | None = None, folds: int | None = None,
                              seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities of the reviewed records from the adapted head (:func:`annotate.adaptive.adapt`).

    For each of ``folds`` stratified folds of the reviewed records, the head is fitted exactly as the loop fits it
    (pool pseudo-labels, every review outside the fold, cross-validated choice of candidate, temperature), with the
    fold's records also excluded from the pseudo-labels, and scores the fold's records.

    Args:
        embeddings: ``(n, d)`` pool embeddings; zero_shot: ``(n, K)`` zero-shot probabilities.
        labels: the ``K`` class names.
        reviewed: ``{pool row: label index}`` of the reviewed records (the labels under test).
        discarded: pool rows people discarded (never pseudo-labelled).
        config: :class:`annotate.adaptive.HeadConfig` (default: the loop's).
        pseudo: :func:`annotate.adaptive.pool_adaptation`'s result for this pool, when the caller has it.
        folds: number of folds (default ``config.cv_folds``, 5); seed: of the split (default ``config.seed``).

    Returns:
        ``(rows (m,), probabilities (m, K))``: the reviewed rows in ascending order and their out-of-fold
        probabilities (rows sum to 1).

    Raises:
        SuspectsError: fewer than :data:`MIN_REVIEWS` reviews, or a single reviewed label.
    """
    from threadpoolctl import threadpool_limits

    from annotate.adaptive import HeadConfig, _folds, adapt, pool_adaptation

    config = config or HeadConfig()
    rows = np.array(sorted(reviewed), dtype=np.int64)
    y = np.array([reviewed[r] for r in rows], dtype=np.int64)
    if len(rows) < MIN_REVIEWS:
        raise SuspectsError(f"{len(rows)} reviewed records: suspect detection needs at least {MIN_REVIEWS}")
    if len(np.unique(y)) < 2:
        raise SuspectsError(f"every reviewed record has the label {labels[int(y[0])]!r}: suspect detection needs "
                            "at least two reviewed labels")
    x = np.asarray(embeddings, dtype=np.float64)
    if pseudo is None:
        pseudo = pool_adaptation(x, zero_shot, labels, config)
    fold_of = _folds(y, config.cv_folds if folds is None else folds, config.seed if seed is None else seed)
    out = np.zeros((len(rows), len(labels)))
    gone = set(int(r) for r in discarded)
    with threadpool_limits(1):
        for f in range(int(fold_of.max()) + 1):
            held = fold_of == f
            train = {int(r): int(v) for r, v in zip(rows[~held], y[~held])}
            fitted = adapt(x, zero_shot, labels, reviewed=train, discarded=sorted(gone | set(rows[held].tolist())),
                           config=config, pseudo=pseudo)
            out[held] = fitted.scores[rows[held]]
    out = np.clip(out, 1e-12, None)
    return rows, out / out.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------
# cleanlab
# ---------------------------------------------------------------------------------------------------------------
def find_suspects(given: np.ndarray, probabilities: np.ndarray, labels, *, rows: np.ndarray | None = None,
                  annotations: list[dict] | None = None, annotators: list | None = None,
                  filter_by: str = FILTER_BY) -> SuspectReport:
    """Label issues among reviewed records from their out-of-fold probabilities (cleanlab; see the module docstring).

    Args:
        given: ``(n,)`` label index of each record (the label the loop trains on).
        probabilities: ``(n, K)`` out-of-fold probabilities.
        labels: the ``K`` class names.
        rows: ``(n,)`` pool rows (default ``arange(n)``).
        annotations: per record ``{annotator: label index}`` of every submitted response; when some record has
            responses from two or more annotators, CROWDLAB scores the records and the annotators.
        annotators: per record, who gave ``given`` (for the per-annotator summary).
        filter_by: cleanlab's rule for the flags (:data:`FILTER_BY`; one of :data:`FILTERS`).

    Returns:
        :class:`SuspectReport` (``seconds`` covers cleanlab only; :func:`detect` adds the fits).

    Raises:
        SuspectsError: shapes disagree or a label index is out of range.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    started = time.perf_counter()
    given = np.asarray(given, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    k = len(labels)
    if p.ndim != 2 or p.shape != (len(given), k) or (len(given) and (given.min() < 0 or given.max() >= k)):
        raise SuspectsError(f"{len(given)} labels in [0, {k}) and probabilities of shape (n, {k}) expected; got "
                            f"probabilities {p.shape}")
    rows = np.arange(len(given)) if rows is None else np.asarray(rows, dtype=np.int64)
    suggested = p.argmax(axis=1)
    multi = annotations is not None and any(len(a) > 1 for a in annotations) \
        and len({name for a in annotations for name in a}) > 1
    consensus = None
    stats: dict = {}
    if multi:
        score, flagged, consensus, stats = _crowdlab(annotations, p, k, filter_by)
        method = "crowdlab"
    else:
        quality = get_label_quality_scores(given, p, method="self_confidence")
        score = 1.0 - quality
        flagged = find_label_issues(given, p, filter_by=filter_by)
        method = "confident-learning"
    return SuspectReport(labels=list(labels), rows=rows, given=given, score=np.clip(score, 0.0, 1.0),
                         flagged=np.asarray(flagged, dtype=bool), suggested=suggested, probabilities=p, method=method,
                         consensus=consensus, annotators=list(annotators) if annotators is not None else None,
                         annotator_stats=stats, oof_accuracy=float((suggested == given).mean()) if len(given) else 0.0,
                         seconds=time.perf_counter() - started)


def _crowdlab(annotations: list[dict], p: np.ndarray, k: int, filter_by: str):
    """CROWDLAB through cleanlab: ``(suspect score, flagged, consensus, {annotator: stats})``."""
    import pandas as pd
    from cleanlab.filter import find_label_issues
    from cleanlab.multiannotator import get_label_quality_multiannotator

    names = sorted({str(name) for a in annotations for name in a})
    table = pd.DataFrame([{str(name): float(v) for name, v in a.items()} for a in annotations], columns=names)
    result = get_label_quality_multiannotator(table, p, verbose=False)
    quality = result["label_quality"]
    consensus = quality["consensus_label"].to_numpy().astype(np.int64)
    score = 1.0 - quality["consensus_quality_score"].to_numpy(dtype=np.float64)
    flagged = find_label_issues(consensus, p, filter_by=filter_by) if len(np.unique(consensus)) > 1 \
        else np.zeros(len(consensus), dtype=bool)
    stats = {}
    for name, row in result["annotator_stats"].iterrows():
        stats[str(name)] = {"annotator_quality": round(float(row["annotator_quality"]), 4),
                            "agreement_with_consensus": round(float(row["agreement_with_consensus"]), 4),
                            "worst_class": int(row["worst_class"]), "labelled": int(row["num_examples_labeled"])}
    return score, flagged, consensus, stats


def detect(embeddings: np.ndarray, zero_shot: np.ndarray, labels, reviewed: dict[int, int], *, discarded=(),
           config=None, pseudo: tuple | None = None, annotations: dict[int, dict] | None = None,
           annotators: dict[int, str] | None = None) -> SuspectReport:
    """Out-of-fold probabilities (:func:`out_of_fold_probabilities`) then cleanlab (:func:`find_suspects`).

    Args:
        reviewed: ``{pool row: label index}`` the loop trains on.
        annotations: ``{pool row: {annotator: label index}}`` of every submitted response (CROWDLAB when some record
            has two or more); annotators: ``{pool row: annotator of the label in reviewed}``.
        The rest as :func:`out_of_fold_probabilities`.

    Raises:
        SuspectsError: see :func:`out_of_fold_probabilities`.
    """
    started = time.perf_counter()
    rows, p = out_of_fold_probabilities(embeddings, zero_shot, labels, reviewed, discarded=discarded, config=config,
                                        pseudo=pseudo)
    given = np.array([reviewed[int(r)] for r in rows], dtype=np.int64)
    per_record = [annotations.get(int(r)) or {} for r in rows] if annotations is not None else None
    who = [annotators.get(int(r)) for r in rows] if annotators is not None else None
    report = find_suspects(given, p, labels, rows=rows, annotations=per_record, annotators=who)
    report.seconds = time.perf_counter() - started
    return report


def detection_metrics(report: SuspectReport, flipped: set[int]) -> dict:
    """How well the flagged records match the records whose label was flipped (``simulate --noise``).

    Args:
        report: the detection on the reviewed records.
        flipped: pool rows whose simulated review was flipped.

    Returns:
        ``{"reviewed", "flipped", "flagged", "true_positives", "precision", "recall", "auroc",
        "precision_at_flipped", "oof_accuracy", "seconds", "filter_by", "filters"}``: precision = flipped share of
        the flagged records, recall = flagged share of the flipped ones (``None`` when undefined); ``auroc``: of the
        suspect score against the flips (scikit-learn); ``precision_at_flipped``: precision of the ``flipped``
        top-scored records (R-precision, independent of cleanlab's flag count); ``filters``: ``{rule: {"flagged",
        "precision", "recall"}}`` of every rule of :data:`FILTERS` on the same probabilities (one label per record).
    """
    from cleanlab.filter import find_label_issues
    from sklearn.metrics import roc_auc_score

    truth = np.array([int(r) in flipped for r in report.rows], dtype=bool)
    n_true = int(truth.sum())

    def counts(flags: np.ndarray) -> dict:
        tp, n_flag = int((truth & flags).sum()), int(flags.sum())
        return {"flagged": n_flag, "true_positives": tp, "precision": tp / n_flag if n_flag else None,
                "recall": tp / n_true if n_true else None}

    top = report.order()[:n_true]
    filters = {}
    if report.method == "confident-learning":
        for rule in FILTERS:
            filters[rule] = counts(np.asarray(find_label_issues(report.given, report.probabilities, filter_by=rule),
                                              dtype=bool))
    return {"reviewed": int(len(report.rows)), "flipped": n_true, **counts(report.flagged),
            "auroc": float(roc_auc_score(truth, report.score)) if 0 < n_true < len(truth) else None,
            "precision_at_flipped": float(truth[top].mean()) if n_true else None,
            "oof_accuracy": round(report.oof_accuracy, 4), "method": report.method, "seconds": round(report.seconds, 3),
            "filter_by": FILTER_BY, "filters": filters}


def flip_labels(gold: np.ndarray, k: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Simulated reviewer mistakes: each record's review is flipped with probability ``noise`` to one of the other
    ``k - 1`` labels, uniformly (symmetric label noise, as in Northcutt et al. 2021's benchmarks); drawn once per
    pool row from ``seed``, so the same record is flipped (or not) whatever the review order.

    Returns:
        ``(reviewed_labels (n,), flipped (n,) bool)``.
    """
    rng = np.random.default_rng([int(seed), 0x5EED])
    gold = np.asarray(gold, dtype=np.int64)
    flipped = rng.random(len(gold)) < noise
    shift = rng.integers(1, k, size=len(gold))
    return np.where(flipped, (gold + shift) % k, gold), flipped
