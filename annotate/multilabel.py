"""Multi-label adapted suggestions: one-vs-rest logistic regressions on the frozen sentence embeddings.

The single-label head (:mod:`annotate.adaptive`) learns one distribution over the labels; a ``MultiLabelQuestion``
needs an independent yes/no per label. Here each label ``l`` gets its own binary logistic regression
(scikit-learn ``LogisticRegression``) on the same embeddings the pool store keeps, the one-vs-rest (binary
relevance) reduction (Tsoumakas & Katakis 2007, "Multi-label classification: an overview"), served as
:class:`service.head.OneVsRestHead` (a sigmoid per label and a decision threshold per label).

Before any review (self-training, the per-label analogue of Gera et al. 2022): the teacher is the zero-shot
multi-label score (NLI: entailment against contradiction, a sigmoid per label). Its decisions at 0.5 estimate each
label's prevalence ``pi_l`` in the pool; the ``fraction * n * pi_l`` highest-scoring texts it marks positive become
positive pseudo-labels and the ``fraction * n * (1 - pi_l)`` lowest-scoring ones it marks negative become negative
pseudo-labels; the label's regression learns from them. A guard keeps the zero-shot scores for a label when its
head would disagree with the zero-shot decisions on more than ``max_unreviewed_change`` of the texts either marks
positive (the Jaccard distance of the two positive sets) with no review to back it.

With reviews, per label (once it has ``min_label_reviews`` reviewed positives and as many negatives, and the pool
``min_reviews_for_cv`` reviewed records): the candidates are the zero-shot scores (threshold 0.5), the
self-trained head, and regressions on the reviews plus the pseudo-labels at each weight of ``pseudo_weights``
(``0``: the reviews alone). Each is scored by its F1 on the reviewed records, out of fold (stratified folds over
the reviews; the pseudo-labels are always in training) with a cross-fitted threshold (each fold's threshold is
the F1-optimal one on the other folds' out-of-fold scores), so the comparison does not reward a threshold chosen
on the records it is measured on. The best candidate wins; ties keep the zero-shot scores, so a label is never
given a head that measured worse than zero-shot on what people reviewed (the cross-validated guard of the
single-label head). The chosen candidate is refitted on every review and its threshold is the F1-optimal one on
its out-of-fold scores (Lipton, Elkan & Naryanaswamy 2014, "Optimal thresholding of classifiers to maximize F1
measure"; threshold selection on held-out predictions per label: Fan & Lin 2007, "A study on threshold selection
for multi-label classification"). A label with fewer reviews than that keeps the 0.5 convention of the zero-shot
scores (and of ``push --multi-label``).

Suggestions: the labels whose score reaches their threshold, or the one closest to its threshold when none does
(:func:`service.head.decide`), as ``push --multi-label`` suggests every label scoring >= 0.5 (or the top one).
A label that keeps the zero-shot scores shows them exactly in Argilla; the served head
(``python -m service --classifier``), which has no NLI model, carries their least-squares image in the embeddings
for that column (``sources`` in ``head.json`` says which columns those are).

Everything is deterministic given the inputs and ``seed`` (``refresh`` relies on it to be idempotent). The
per-label scores and decisions (:attr:`MultiLabelAdapted.scores`, :meth:`MultiLabelAdapted.decisions`,
``thresholds``) are what per-label bulk acceptance reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from service.head import AdaptError, OneVsRestHead, decide, logit

logger = logging.getLogger(__name__)

ZERO_SHOT = "zero-shot"
PSEUDO = "pseudo-labels"


@dataclass
class MultiLabelConfig:
    """Knobs of the one-vs-rest head. Chosen a priori, mirroring :class:`annotate.adaptive.HeadConfig` (the same
    pseudo-label fraction, strengths, weights and guard), not tuned on GoEmotions, where docs/adaptive.md reports
    them.

    Attributes:
        pseudo_fraction: share of the pool taken as pseudo-labels per label (positives and negatives together).
        max_pseudo_labels: at most this many pseudo-labels per label.
        c: inverse L2 strength of every logistic regression (scikit-learn's ``C``).
        pseudo_weights: candidate weights of a pseudo-label relative to a review (``0``: the reviews alone).
        max_unreviewed_change: the guard of a label without enough reviews: its head is used only when it disagrees
            with the zero-shot decisions on at most this share of the texts either marks positive.
        min_reviews_for_cv: reviewed records before any label is cross-validated.
        min_label_reviews: reviewed positives, and negatives, a label needs before it is cross-validated and its
            threshold fitted (below: threshold 0.5).
        prior_count: the pseudo-labels' total weight, in reviews, while a label is not cross-validated yet.
        cv_folds: folds of the cross-validation (at most the label's reviewed positives or negatives).
        tune_thresholds: fit the per-label threshold on out-of-fold scores (else always 0.5).
        seed: seeds the fold split.
    """

    pseudo_fraction: float = 0.3
    max_pseudo_labels: int = 3000
    c: float = 1.0
    pseudo_weights: tuple[float, ...] = (1.0, 0.3, 0.1, 0.0)
    max_unreviewed_change: float = 0.3
    min_reviews_for_cv: int = 20
    min_label_reviews: int = 5
    prior_count: float = 200.0
    cv_folds: int = 5
    tune_thresholds: bool = True
    seed: int = 0


@dataclass
class MultiLabelFitReport:
    """What one fit did. ``labels``: per label ``{"source", "threshold", "pseudo_weight", "cv_f1", "cv_f1_zero_shot",
    "reviewed_positives", "changed_share", "candidates"}`` (F1 on the reviewed records, out of fold)."""

    revision: str
    mode: str  # "zero-shot" (no label uses a head) or "one-vs-rest"
    pool_size: int
    reviewed: int
    pseudo_labels: int
    labels: dict = field(default_factory=dict)
    cv_macro_f1: float | None = None
    cv_macro_f1_zero_shot: float | None = None
    fit_seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MultiLabelAdapted:
    """The outcome of :func:`adapt_multilabel`.

    Attributes:
        head: the fitted :class:`service.head.OneVsRestHead`, or ``None`` when every label keeps the zero-shot
            scores at threshold 0.5.
        scores: ``(n, K)`` per-label probabilities of every pool row (the head's, or the zero-shot ones for the labels
            that keep them).
        thresholds: ``(K,)`` decision thresholds.
        sources: per label, what its column is (``"zero-shot"``, ``"pseudo-labels"``, ``"reviews+pseudo-labels"``,
            ``"reviews"``).
        report: what the fit did.
    """

    head: OneVsRestHead | None
    scores: np.ndarray
    thresholds: np.ndarray
    sources: list[str]
    report: MultiLabelFitReport

    @property
    def agent_suffix(self) -> str:
        return self.head.agent if self.head is not None else ZERO_SHOT

    def decisions(self, at_least_one: bool = True) -> np.ndarray:
        """``(n, K)`` bool: the labels suggested for every pool row (:func:`service.head.decide`)."""
        return decide(self.scores, self.thresholds, at_least_one)

    def predict(self, embeddings: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
        """``(m, K)`` scores of other texts as the pool's are made: the head's columns from ``embeddings``
        ``(m, d)``, the zero-shot columns from ``zero_shot`` ``(m, K)``."""
        zero_shot = np.asarray(zero_shot, dtype=np.float64)
        if self.head is None:
            return zero_shot.copy()
        out = self.head.predict_proba(embeddings)
        keep = [j for j, s in enumerate(self.sources) if s == ZERO_SHOT]
        out[:, keep] = zero_shot[:, keep]
        return out


# ---------------------------------------------------------------------------------------------------------------
# Pseudo-labels
# ---------------------------------------------------------------------------------------------------------------
def select_pseudo_labels(zero_shot: np.ndarray, fraction: float = 0.3, max_per_label: int = 3000,
                         exclude: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Confident positives and negatives of each label from zero-shot multi-label scores (see the module docstring).

    Args:
        zero_shot: ``(n, K)`` independent per-label probabilities.
        fraction: share of the pool to pseudo-label per label, in (0, 1].
        max_per_label: cap on a label's pseudo-labels.
        exclude: ``(n,)`` bool, rows never chosen.

    Returns:
        Per label ``(rows, targets)``: int rows and their 0/1 pseudo-labels (positives first, then negatives).
    """
    p = np.asarray(zero_shot, dtype=np.float64)
    n, k = p.shape
    allowed = np.ones(n, dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    positive = decide(p, 0.5, at_least_one=False)
    share = min(fraction, max_per_label / max(n, 1))
    out = []
    for label in range(k):
        prevalence = float(np.clip(positive[:, label].mean(), 1.0 / n, 1.0 - 1.0 / n))
        pos = np.flatnonzero(positive[:, label] & allowed)
        neg = np.flatnonzero(~positive[:, label] & allowed)
        pos = pos[np.argsort(-p[pos, label], kind="stable")][:max(1, int(round(share * n * prevalence)))]
        neg = neg[np.argsort(p[neg, label], kind="stable")][:max(1, int(round(share * n * (1 - prevalence))))]
        out.append((np.concatenate([pos, neg]).astype(np.int64),
                    np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.int64)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Pieces: one binary regression, thresholds, cross-validation
# ---------------------------------------------------------------------------------------------------------------
def _binary(x: np.ndarray, y: np.ndarray, weights: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """A fitted L2 logistic regression (scikit-learn, lbfgs) as ``(coef (d,), intercept)``; one class only: a
    constant at its smoothed rate ``(positives + 0.5) / (n + 1)``."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        rate = (float((weights * y).sum()) + 0.5) / (float(weights.sum()) + 1.0)
        return np.zeros(x.shape[1]), float(logit(rate))
    model = LogisticRegression(C=c, max_iter=300, tol=1e-4)
    model.fit(x, y, sample_weight=weights)
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z)


def f1_threshold(scores: np.ndarray, y: np.ndarray, default: float = 0.5) -> float:
    """The threshold maximising F1 of ``scores >= t`` against the 0/1 ``y`` (scikit-learn's
    ``precision_recall_curve``; ties: the one closest to ``default``); ``default`` when ``y`` has no positive.
    Clipped to [0.01, 0.99], so a saved head never has a threshold of 0 or 1."""
    from sklearn.metrics import precision_recall_curve

    if not y.any():
        return default
    precision, recall, thresholds = precision_recall_curve(y, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)[:-1]
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    t = float(thresholds[best[np.argmin(np.abs(thresholds[best] - default))]])
    return float(np.clip(t, 0.01, 0.99))


def _f1(decisions: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, decisions.astype(np.int64), zero_division=0))


def cross_fitted_f1(oof: np.ndarray, y: np.ndarray, folds: np.ndarray) -> float:
    """F1 of out-of-fold scores ``oof`` with each fold's threshold fitted (:func:`f1_threshold`) on the other folds'
    scores: an estimate that does not see the records a threshold is measured on."""
    decisions = np.zeros(len(y), dtype=bool)
    for f in np.unique(folds):
        test = folds == f
        t = f1_threshold(oof[~test], y[~test])
        decisions[test] = oof[test] >= t
    return _f1(decisions, y)


def _folds(y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Stratified fold index per reviewed record (scikit-learn ``StratifiedKFold``, shuffled with ``seed``)."""
    from sklearn.model_selection import StratifiedKFold

    folds = np.zeros(len(y), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for f, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
        folds[test] = f
    return folds


def _linear_image(x: np.ndarray, target_logit: np.ndarray) -> tuple[np.ndarray, float]:
    """Ridge least squares (scikit-learn ``Ridge``) of a label's zero-shot logits on the embeddings: the served
    column of a label that keeps the zero-shot scores (an approximation for NLI scores, exact for none)."""
    from sklearn.linear_model import Ridge

    model = Ridge(alpha=1.0).fit(x, target_logit)
    return model.coef_.astype(np.float64), float(model.intercept_)


def revision_of(ids, reviewed: dict[str, tuple[int, ...]], config: MultiLabelConfig, labels) -> str:
    """Content hash of a fit's inputs (16 hex chars): pool ids, reviewed ids with their label sets, config, labels."""
    digest = hashlib.sha256()
    digest.update(json.dumps(["multi-label", list(labels), asdict(config)], sort_keys=True).encode())
    for rid in ids:
        digest.update(rid.encode())
    for rid in sorted(reviewed):
        digest.update(f"{rid}={','.join(map(str, sorted(reviewed[rid])))};".encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class PoolAdaptation:
    """What every refit of one pool shares (:func:`pool_adaptation`): per-label pseudo-labels and the self-trained
    head's ``(coef, intercept)`` per label with its pool scores ``(n, K)``."""

    pseudo: list
    coef: np.ndarray
    intercept: np.ndarray
    scores: np.ndarray


def pool_adaptation(embeddings: np.ndarray, zero_shot: np.ndarray, config: MultiLabelConfig | None = None
                    ) -> PoolAdaptation:
    """Pseudo-labels of the pool (:func:`select_pseudo_labels`) and the self-trained regression of each label;
    pass the result to :func:`adapt_multilabel` as ``pool`` when refitting the same pool several times.

    Raises:
        AdaptError: shapes disagree or the pool is empty.
    """
    from threadpoolctl import threadpool_limits

    config = config or MultiLabelConfig()
    x, p0 = _check(embeddings, zero_shot)
    with threadpool_limits(1):
        pseudo = select_pseudo_labels(p0, config.pseudo_fraction, config.max_pseudo_labels)
        coef = np.zeros((p0.shape[1], x.shape[1]))
        intercept = np.zeros(p0.shape[1])
        for label, (rows, y) in enumerate(pseudo):
            coef[label], intercept[label] = _binary(x[rows], y, np.ones(len(rows)), config.c)
    return PoolAdaptation(pseudo, coef, intercept, _sigmoid(x @ coef.T + intercept))


def _check(embeddings, zero_shot) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(embeddings, dtype=np.float64)
    p0 = np.asarray(zero_shot, dtype=np.float64)
    if p0.ndim != 2 or x.ndim != 2 or len(p0) == 0 or x.shape[0] != p0.shape[0] or p0.shape[1] < 1:
        raise AdaptError(f"need a non-empty pool with matching embeddings {x.shape} and zero-shot scores {p0.shape}")
    if ((p0 < 0) | (p0 > 1)).any() or np.isnan(p0).any():
        raise AdaptError("zero-shot scores must be probabilities in [0, 1]")
    return x, p0


def adapt_multilabel(embeddings: np.ndarray, zero_shot: np.ndarray, labels, *, ids=None,
                     reviewed: dict[int, object] | None = None, discarded=(), config: MultiLabelConfig | None = None,
                     encoder: dict | None = None, meta: dict | None = None,
                     pool: PoolAdaptation | None = None) -> MultiLabelAdapted:
    """Fit the one-vs-rest head on a pool and its reviews, and score every pool row (see the module docstring).

    Args:
        embeddings: ``(n, d)`` unit sentence embeddings of the pool.
        zero_shot: ``(n, K)`` zero-shot multi-label probabilities (independent per label), ``labels`` order.
        labels: the ``K`` label names.
        ids: ``n`` record ids (for the revision hash; row numbers when ``None``).
        reviewed: ``{row: label indices}`` (any iterable of ints; empty: the reviewer said no label applies) of
            the submitted records.
        discarded: rows people discarded: never pseudo-labelled.
        config: :class:`MultiLabelConfig`.
        encoder: the embeddings' encoder (stored in the head).
        meta: extra facts stored in ``head.json`` (template, dataset).
        pool: :func:`pool_adaptation` of this pool, when the caller keeps it between fits.

    Returns:
        :class:`MultiLabelAdapted`. Reviewed rows get scores too; callers leave them alone.

    Raises:
        AdaptError: shapes disagree, the pool is empty, or a review names a row or label index outside the pool.
    """
    from threadpoolctl import threadpool_limits

    config = config or MultiLabelConfig()
    x, p0 = _check(embeddings, zero_shot)
    n, k = p0.shape
    if k != len(labels):
        raise AdaptError(f"zero-shot scores have {k} columns for {len(labels)} labels")
    sets = {int(r): tuple(sorted({int(v) for v in values})) for r, values in (reviewed or {}).items()}
    if any(not 0 <= r < n for r in sets) or any(not 0 <= v < k for vs in sets.values() for v in vs):
        raise AdaptError("a review names a label index or a row outside the pool")
    started = time.perf_counter()
    with threadpool_limits(1):  # small dense problems: one BLAS thread is fastest on busy cores (annotate.adaptive)
        if pool is None:
            pool = pool_adaptation(x, p0, config)
        return _fit(x, p0, list(labels), ids, sets, discarded, config, encoder, meta, pool, started)


def _fit(x, p0, labels, ids, sets, discarded, config, encoder, meta, pool, started) -> MultiLabelAdapted:
    n, k = p0.shape
    ids = [str(i) for i in range(n)] if ids is None else list(ids)
    revision = revision_of(ids, {ids[r]: v for r, v in sets.items()}, config, labels)
    exclude = np.zeros(n, dtype=bool)
    exclude[list(sets)] = True
    exclude[list(discarded)] = True
    rows_h = np.fromiter(sets, dtype=np.int64, count=len(sets))
    y_h = np.zeros((len(rows_h), k), dtype=np.int64)
    for i, r in enumerate(rows_h):
        y_h[i, list(sets[int(r)])] = 1
    zs_decisions = decide(p0, 0.5, at_least_one=False)

    coef = pool.coef.copy()
    intercept = pool.intercept.copy()
    thresholds = np.full(k, 0.5)
    sources: list[str] = []
    per_label: dict = {}
    pseudo_total = 0
    cv_f1, cv_f1_zero = [], []
    for label in range(k):
        rows_p, y_p = pool.pseudo[label]
        keep = ~exclude[rows_p]
        rows_p, y_p = rows_p[keep], y_p[keep]
        pseudo_total += len(rows_p)
        y = y_h[:, label]
        positives, negatives = int(y.sum()), int(len(y) - y.sum())

        def train(weight: float, train_idx: np.ndarray) -> tuple[np.ndarray, float]:
            xs = [x[rows_p]] if weight > 0 else []
            ys = [y_p] if weight > 0 else []
            ws = [np.full(len(rows_p), weight)] if weight > 0 else []
            if len(train_idx):
                xs.append(x[rows_h[train_idx]])
                ys.append(y[train_idx])
                ws.append(np.ones(len(train_idx)))
            if not xs:
                return np.zeros(x.shape[1]), 0.0
            return _binary(np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), config.c)

        info: dict = {"reviewed_positives": positives, "pseudo_labels": len(rows_p)}
        enough = (len(rows_h) >= config.min_reviews_for_cv and positives >= config.min_label_reviews
                  and negatives >= config.min_label_reviews)
        if not enough:
            # Too few reviews of this label to measure it: the self-trained head, the reviews joining it with the
            # pseudo-labels weighing ``prior_count`` reviews in all; the unreviewed-change guard decides.
            if len(rows_h):
                weight = min(1.0, config.prior_count / max(len(rows_p), 1))
                w, b = train(weight, np.arange(len(rows_h)))
            else:
                weight, w, b = 1.0, pool.coef[label], pool.intercept[label]
            head_pos = _sigmoid(x @ w + b) >= 0.5
            union = int((head_pos | zs_decisions[:, label]).sum())
            changed = float((head_pos != zs_decisions[:, label]).sum() / max(union, 1))
            info.update(changed_share=round(changed, 4), pseudo_weight=weight, threshold=0.5)
            if changed > config.max_unreviewed_change or not len(rows_p):
                sources.append(ZERO_SHOT)
                info["note"] = (f"guard: the head would change {changed:.0%} of the labelled texts (more than "
                                f"{config.max_unreviewed_change:.0%}) with too few reviews to confirm it")
                coef[label], intercept[label] = _linear_image(x, logit(p0[:, label]))
            else:
                sources.append(PSEUDO if not len(rows_h) else "reviews+pseudo-labels")
                coef[label], intercept[label] = w, b
            info["source"] = sources[-1]
            per_label[labels[label]] = info
            continue

        # Enough reviews: every candidate out of fold, thresholds cross-fitted; zero-shot wins ties.
        folds = _folds(y, min(config.cv_folds, positives, negatives), config.seed)
        zero_f1 = _f1(p0[rows_h, label] >= 0.5, y)
        self_trained = _sigmoid(x[rows_h] @ pool.coef[label] + pool.intercept[label])
        candidates = {ZERO_SHOT: zero_f1, PSEUDO: cross_fitted_f1(self_trained, y, folds)}
        oof_by: dict[str, np.ndarray] = {PSEUDO: self_trained}
        weights_by: dict[str, float] = {}
        for weight in config.pseudo_weights:
            if weight > 0 and not len(rows_p):
                continue
            name = f"reviews+pseudo-labels@{weight:g}" if weight > 0 else "reviews"
            oof = np.zeros(len(y))
            for f in np.unique(folds):
                test = folds == f
                w, b = train(weight, np.flatnonzero(~test))
                oof[test] = _sigmoid(x[rows_h[test]] @ w + b)
            oof_by[name], weights_by[name] = oof, weight
            candidates[name] = cross_fitted_f1(oof, y, folds)
        best = max(candidates, key=lambda name: candidates[name])  # first maximum: zero-shot, then self-trained
        cv_f1.append(candidates[best])
        cv_f1_zero.append(zero_f1)
        info.update(cv_f1=round(candidates[best], 4), cv_f1_zero_shot=round(zero_f1, 4),
                    candidates={name: round(v, 4) for name, v in candidates.items()})
        if best == ZERO_SHOT:
            sources.append(ZERO_SHOT)
            coef[label], intercept[label] = _linear_image(x, logit(p0[:, label]))
            info.update(threshold=0.5, pseudo_weight=None,
                        note="no head measured better than the zero-shot scores on the reviewed records")
        else:
            if best == PSEUDO:
                w, b = pool.coef[label], pool.intercept[label]
                sources.append(PSEUDO)
                weight = 1.0
            else:
                weight = weights_by[best]
                w, b = train(weight, np.arange(len(y)))
                sources.append("reviews+pseudo-labels" if weight > 0 else "reviews")
            coef[label], intercept[label] = w, b
            thresholds[label] = f1_threshold(oof_by[best], y) if config.tune_thresholds else 0.5
            info.update(threshold=round(float(thresholds[label]), 6), pseudo_weight=weight)
        info["source"] = sources[-1]
        per_label[labels[label]] = info

    scores = _sigmoid(x @ coef.T + intercept)
    kept = [j for j, s in enumerate(sources) if s == ZERO_SHOT]
    scores[:, kept] = p0[:, kept]
    any_head = any(s != ZERO_SHOT for s in sources)
    report = MultiLabelFitReport(
        revision=revision, mode="one-vs-rest" if any_head else ZERO_SHOT, pool_size=n, reviewed=len(sets),
        pseudo_labels=pseudo_total, labels=per_label,
        cv_macro_f1=float(np.mean(cv_f1)) if cv_f1 else None,
        cv_macro_f1_zero_shot=float(np.mean(cv_f1_zero)) if cv_f1_zero else None,
        fit_seconds=time.perf_counter() - started,
        note="" if any_head else "every label keeps the zero-shot scores")
    head = None
    if any_head:
        head = OneVsRestHead(labels, coef, intercept, thresholds, encoder, revision,
                             {"mode": report.mode, "sources": list(sources), "reviewed": len(sets),
                              "pseudo_labels": pseudo_total, **(meta or {})})
    return MultiLabelAdapted(head, scores, thresholds, sources, report)


# ---------------------------------------------------------------------------------------------------------------
# Argilla: reviews and suggestions of a MultiLabelQuestion
# ---------------------------------------------------------------------------------------------------------------
def review_sets(submitted: dict[str, object], labels) -> dict[str, tuple[int, ...]]:
    """``{record id: label indices}`` of submitted multi-label responses (a list of labels, a single label, or
    ``None``/empty for "no label applies").

    Raises:
        ValueError: a response names a label the dataset does not have.
    """
    index = {label: i for i, label in enumerate(labels)}
    out, unknown = {}, set()
    for rid, value in submitted.items():
        values = [] if value is None else [value] if isinstance(value, str) else list(value)
        unknown.update(str(v) for v in values if v not in index)
        out[rid] = tuple(sorted({index[v] for v in values if v in index}))
    if unknown:
        raise ValueError(f"submitted labels {', '.join(map(repr, sorted(unknown)[:5]))} are not among the dataset's "
                         f"labels {list(labels)}")
    return out


def suggestion(scores: np.ndarray, labels, thresholds) -> tuple[list[str], list[float]]:
    """One record's multi-label suggestion: the labels :func:`service.head.decide` assigns, by descending score,
    and their scores (as :func:`annotate.dataset.suggestion_value` lays them out)."""
    chosen = decide(np.asarray(scores, dtype=np.float64)[None, :], thresholds)[0]
    order = [j for j in np.argsort(-np.asarray(scores), kind="stable") if chosen[j]]
    return [labels[j] for j in order], [float(scores[j]) for j in order]


def same_labels(a, b) -> bool:
    """Whether two multi-label values (lists of labels, or one label) name the same set of labels."""
    def as_set(v):
        return set() if v is None else {v} if isinstance(v, str) else set(v)

    return as_set(a) == as_set(b)


def compare_suggestion(value, score, current_value, current_score, min_score_change: float) -> tuple[bool, bool]:
    """``(label set changed, score moved)`` between a new multi-label suggestion and the record's current one:
    the scores of the same labels compared, more than ``min_score_change`` apart (any change when 0)."""
    changed = current_value is None or not same_labels(value, current_value)
    if changed or current_score is None:
        return changed, True
    old = dict(zip(current_value, current_score if isinstance(current_score, list) else [current_score]))
    moved = max(abs(s - float(old.get(v, -1.0))) for v, s in zip(value, score))
    return False, moved > (min_score_change if min_score_change > 0 else 1e-6)


# ---------------------------------------------------------------------------------------------------------------
# simulate: gold label sets stand in for reviewers
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class MultiLabelSplit:
    """Embeddings ``(n, d)``, zero-shot multi-label probabilities ``(n, K)`` and gold ``(n, K)`` 0/1 of one split."""

    embeddings: np.ndarray
    zero_shot: np.ndarray
    gold: np.ndarray


def f1_scores(decisions: np.ndarray, gold: np.ndarray, labels) -> dict:
    """``{"micro_f1", "macro_f1", "per_label": {label: f1}}`` of ``(n, K)`` 0/1 decisions (scikit-learn)."""
    from sklearn.metrics import f1_score

    d, g = np.asarray(decisions, dtype=np.int64), np.asarray(gold, dtype=np.int64)
    per = f1_score(g, d, average=None, zero_division=0)
    return {"micro_f1": float(f1_score(g, d, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(g, d, average="macro", zero_division=0)),
            "per_label": {label: round(float(v), 4) for label, v in zip(labels, per)}}


def label_margin(scores: np.ndarray, thresholds) -> np.ndarray:
    """``(n,)`` review priority of multi-label scores: the smallest distance, in logits, between a label's score and
    its threshold (the decision closest to flipping first; the per-label margin of Brinker 2006, "On active
    learning in multi-label classification")."""
    return np.abs(logit(scores) - logit(np.broadcast_to(thresholds, scores.shape[-1:]))).min(axis=1)


def read_label_sets(path, text_fields, gold_column: str, labels, label_map: dict | None = None
                    ) -> tuple[list[str], np.ndarray]:
    """Texts and ``(n, K)`` 0/1 gold of a labelled file whose ``gold_column`` holds lists of labels (a plain string
    counts as a one-label list); texts exactly as :func:`annotate.simulate.read_labelled` joins them.

    Raises:
        pool.readers.InputError: as :func:`annotate.simulate.read_labelled`.
        ValueError: a gold value maps to no label (the message names them and what to pass).
    """
    import pandas as pd

    from annotate.simulate import read_labelled

    texts, _ = read_labelled(path, text_fields, gold_column)
    frame = pd.read_json(path, lines=True, dtype=False) if str(path).endswith(".jsonl") else \
        pd.read_parquet(path) if str(path).endswith(".parquet") else pd.read_csv(path, dtype=str, keep_default_na=False)
    index = {label: i for i, label in enumerate(labels)}
    gold = np.zeros((len(texts), len(labels)), dtype=np.int64)
    unknown = set()
    for row, value in enumerate(frame[gold_column].tolist()):
        values = [value] if isinstance(value, str) else list(value) if value is not None else []
        for v in values:
            mapped = (label_map or {}).get(str(v), str(v))
            if mapped in index:
                gold[row, index[mapped]] = 1
            else:
                unknown.add(str(v))
    if unknown:
        raise ValueError(f"gold values of {path} that are no candidate label: {', '.join(map(repr, sorted(unknown)[:10]))}"
                         ": map them with --label-map '{\"gold value\": \"candidate label\"}'")
    return texts, gold


def simulate_multilabel(pool: MultiLabelSplit, labels, budgets, *, strategy: str = "random", round_size: int = 25,
                        evaluation: MultiLabelSplit | None = None, config: MultiLabelConfig | None = None,
                        seed: int = 0, progress: bool = True) -> dict:
    """The review loop of ``simulate`` on a multi-label pool: micro/macro-F1 of the suggestions at each budget.

    Records are reviewed in rounds of ``round_size`` (their gold label sets stand in for reviewers), the head is
    refitted after each round (with ``strategy="random"`` only at the budgets: the order does not depend on it), and
    at each budget the suggestions' decisions (:meth:`MultiLabelAdapted.predict` and the thresholds) are measured on
    ``evaluation`` (or the pending pool records) next to the zero-shot decisions (0.5, at least one label) and a
    one-vs-rest regression on the reviews alone (threshold 0.5).

    Args:
        strategy: ``"random"`` (seeded uniform order) or ``"label-margin"`` (:func:`label_margin` of the current
            suggestions; ``least-confidence`` and ``margin`` mean the same here).

    Returns:
        ``{"zero_shot": {"micro_f1", "macro_f1", "per_label"}, "curve": [{"reviewed", "eval_micro_f1",
        "eval_macro_f1", "per_label", "sources", "thresholds", "reviews_only", "refit_seconds", ...}], ...}``.

    Raises:
        ValueError: budgets outside [0, pool size] or an unknown strategy.
    """
    from tqdm import tqdm

    budgets = sorted({int(b) for b in budgets})
    n, k = pool.zero_shot.shape
    if not budgets or budgets[0] < 0 or budgets[-1] > n:
        raise ValueError(f"budgets must lie in [0, {n}] (the pool size); got {budgets}")
    if strategy in ("least-confidence", "margin"):
        strategy = "label-margin"
    if strategy not in ("random", "label-margin"):
        raise ValueError(f"unknown multi-label strategy {strategy!r}: use random or label-margin")
    rng = np.random.default_rng(seed)
    config = config or MultiLabelConfig(seed=seed)
    target = evaluation or pool
    zero = f1_scores(decide(target.zero_shot, 0.5), target.gold, labels)
    report: dict = {"multi_label": True, "pool_size": n, "labels": list(labels), "strategy": strategy,
                    "round_size": round_size, "evaluated_on": "eval" if evaluation is not None else "pending pool records",
                    "eval_size": len(target.gold), "decision_rule": "score >= threshold, at least one label",
                    "gold_label_counts": {label: int(c) for label, c in zip(labels, target.gold.sum(axis=0))},
                    "zero_shot": zero, "curve": []}
    began = time.perf_counter()
    shared = pool_adaptation(pool.embeddings, pool.zero_shot, config)
    report["pseudo_label_seconds"] = round(time.perf_counter() - began, 4)
    reviewed: dict[int, tuple[int, ...]] = {}
    adapted = None
    bar = tqdm(total=budgets[-1], unit="review", desc=f"simulate multi-label ({strategy})", disable=not progress)
    for budget in budgets:
        while len(reviewed) < budget:
            pending = np.setdiff1d(np.arange(n), np.fromiter(reviewed, dtype=np.int64, count=len(reviewed)))
            count = min(round_size, budget - len(reviewed))
            if strategy == "random":
                take = np.sort(rng.choice(pending, size=min(count, len(pending)), replace=False))
            else:
                scores = adapted.scores if adapted is not None else pool.zero_shot
                thresholds = adapted.thresholds if adapted is not None else 0.5
                take = pending[np.argsort(label_margin(scores[pending], thresholds), kind="stable")[:count]]
            reviewed.update({int(r): tuple(np.flatnonzero(pool.gold[r]).tolist()) for r in take})
            bar.update(len(take))
            if strategy != "random":
                adapted = adapt_multilabel(pool.embeddings, pool.zero_shot, labels, reviewed=reviewed, config=config,
                                           pool=shared)
        began = time.perf_counter()
        adapted = adapt_multilabel(pool.embeddings, pool.zero_shot, labels, reviewed=reviewed, config=config,
                                   pool=shared)
        refit_seconds = time.perf_counter() - began
        pending = np.setdiff1d(np.arange(n), np.fromiter(reviewed, dtype=np.int64, count=len(reviewed)))
        if evaluation is not None:
            scores, gold = adapted.predict(evaluation.embeddings, evaluation.zero_shot), evaluation.gold
        else:
            scores, gold = adapted.scores[pending], pool.gold[pending]
        measured = f1_scores(decide(scores, adapted.thresholds), gold, labels)
        entry = {"reviewed": len(reviewed), "eval_micro_f1": measured["micro_f1"],
                 "eval_macro_f1": measured["macro_f1"], "per_label": measured["per_label"],
                 "mode": adapted.report.mode, "sources": dict(zip(labels, adapted.sources)),
                 "thresholds": {label: round(float(t), 4) for label, t in zip(labels, adapted.thresholds)},
                 "cv_macro_f1": adapted.report.cv_macro_f1, "cv_macro_f1_zero_shot": adapted.report.cv_macro_f1_zero_shot,
                 "pseudo_labels": adapted.report.pseudo_labels, "refit_seconds": round(refit_seconds, 4),
                 "reviews_only": _reviews_only(pool, reviewed, labels, config, evaluation, pending)}
        report["curve"].append(entry)
        logger.info("reviewed %d: micro-F1 %.4f macro-F1 %.4f (zero-shot %.4f / %.4f), %s, refit %.2f s",
                    entry["reviewed"], entry["eval_micro_f1"], entry["eval_macro_f1"], zero["micro_f1"],
                    zero["macro_f1"], entry["mode"], refit_seconds)
    bar.close()
    return report


def _reviews_only(pool: MultiLabelSplit, reviewed: dict, labels, config: MultiLabelConfig,
                  evaluation: MultiLabelSplit | None, pending: np.ndarray) -> dict | None:
    """Micro/macro-F1 of one-vs-rest regressions on the reviewed records alone (threshold 0.5, at least one
    label), the reference a head must beat; ``None`` before any review."""
    from threadpoolctl import threadpool_limits

    if not reviewed:
        return None
    rows = np.fromiter(reviewed, dtype=np.int64, count=len(reviewed))
    x = pool.embeddings[rows]
    target_x, gold = (evaluation.embeddings, evaluation.gold) if evaluation is not None else \
        (pool.embeddings[pending], pool.gold[pending])
    scores = np.zeros((len(target_x), len(labels)))
    with threadpool_limits(1):
        for label in range(len(labels)):
            w, b = _binary(x, pool.gold[rows, label], np.ones(len(rows)), config.c)
            scores[:, label] = _sigmoid(np.asarray(target_x, dtype=np.float64) @ w + b)
    measured = f1_scores(decide(scores, 0.5), gold, labels)
    return {"micro_f1": measured["micro_f1"], "macro_f1": measured["macro_f1"]}


def render_simulation(report: dict) -> str:
    """The multi-label simulate report as a table (several lines)."""
    zero = report["zero_shot"]
    lines = [f"multi-label, strategy {report['strategy']}, rounds of {report['round_size']}, measured on "
             f"{report['evaluated_on']} ({report['eval_size']}); decisions: {report['decision_rule']}",
             f"zero-shot (threshold 0.5): micro-F1 {zero['micro_f1']:.4f}, macro-F1 {zero['macro_f1']:.4f}",
             f"{'reviewed':>8}  {'micro-F1':>8}  {'macro-F1':>8}  {'reviews only (micro/macro)':>26}  labels on a head"]
    for e in report["curve"]:
        only = e["reviews_only"]
        only = f"{only['micro_f1']:.4f} / {only['macro_f1']:.4f}" if only else "-"
        heads = [label for label, source in e["sources"].items() if source != ZERO_SHOT]
        lines.append(f"{e['reviewed']:>8}  {e['eval_micro_f1']:>8.4f}  {e['eval_macro_f1']:>8.4f}  {only:>26}  "
                     f"{len(heads)}/{len(e['sources'])} ({', '.join(heads) or 'none'}), refit {e['refit_seconds']:.2f} s")
    return "\n".join(lines)
