"""Adapted suggestions: a light head on frozen sentence embeddings, fitted to the pool and to every review.

The zero-shot scores of a pool are the teacher; this module turns them, and the labels people submit, into a
better classifier for *this* pool without running the encoder again (the embeddings are computed once, by
``push`` or ``python -m annotate score``, and kept in a :class:`pool.store.PoolStore`).

Before any review (self-training, after Gera et al. 2022, "Zero-Shot Text Classification with Self-Training",
EMNLP): the zero-shot probabilities are re-weighted to the pool's label prior, estimated by EM (Saerens,
Latinne & Decaestecker 2002, "Adjusting the outputs of a classifier to new a priori probabilities"), so an
imbalanced pool does not get a uniform prior forced on it; the most confident texts of each class, in proportion
to that prior, become pseudo-labels; a multinomial logistic regression on the embeddings learns from them and
generalises to the rest of the pool. Its probabilities are tempered (Guo et al. 2017) on the pool rows it did not
train on, against the zero-shot labels. A guard keeps the zero-shot scores when the head would relabel more of the
pool than :attr:`HeadConfig.max_unreviewed_change` with no review to back it (the failure seen on emotion).

With reviews: human labels join the pseudo-labels. How much the pseudo-labels still count (their weight) and
whether the zero-shot scores enter as features are chosen by cross-validation on the reviewed records, among a
handful of candidates that includes the plain zero-shot scores; so pseudo-labels help early, fade as reviews
grow, and the chosen candidate is never one that measured worse than zero-shot on what people labelled. The
temperature is then fitted on the cross-validated predictions of the reviewed records.

Single-label only (multi-label datasets keep the zero-shot scores). Everything is deterministic given the inputs
and ``seed``: the same pool and reviews always give the same head, revision and scores (``refresh`` relies on
it to be idempotent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from service.bias import FLOOR_SHARE, BiasEstimate, estimate_bias
from service.calibration import softmax
from service.head import AdaptError, AdaptiveHead

logger = logging.getLogger(__name__)

_EPS = 1e-12


# ---------------------------------------------------------------------------------------------------------------
# Label prior (EM) and pseudo-labels
# ---------------------------------------------------------------------------------------------------------------
def em_prior(probabilities: np.ndarray, source_prior: np.ndarray | None = None, max_iter: int = 200,
             tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Estimate the label prior of a pool and re-weight the posteriors to it (Saerens et al. 2002, eq. 2.9-2.10).

    Args:
        probabilities: ``(n, K)`` posteriors of a classifier trained (here: designed) under ``source_prior``.
        source_prior: ``(K,)`` the prior those posteriors assume; uniform when ``None`` (zero-shot scores favour no
            label a priori).

    Returns:
        ``(prior, adjusted)``: the estimated pool prior ``(K,)`` and the adjusted posteriors ``(n, K)``.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0)
    k = p.shape[1]
    source = np.full(k, 1.0 / k) if source_prior is None else np.asarray(source_prior, dtype=np.float64)
    prior = p.mean(axis=0)
    adjusted = p
    for _ in range(max_iter):
        adjusted = p * (prior / source)
        adjusted /= adjusted.sum(axis=1, keepdims=True)
        new = adjusted.mean(axis=0)
        if np.abs(new - prior).max() < tol:
            prior = new
            break
        prior = new
    return prior, adjusted


def select_pseudo_labels(probabilities: np.ndarray, prior: np.ndarray, fraction: float = 0.3,
                         exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The most confident texts of each class as pseudo-labels, in proportion to the class prior.

    Class ``k`` gets the ``round(fraction * n * prior[k])`` texts (at least one when any is predicted ``k``) whose
    top label is ``k``, ranked by the margin between the top two probabilities (Gera et al. 2022 rank by the
    entailment score; the margin also works for scores that are not entailment probabilities).

    Args:
        probabilities: ``(n, K)``.
        prior: ``(K,)`` estimated pool prior.
        fraction: share of the pool to pseudo-label, in (0, 1].
        exclude: ``(n,)`` bool, rows never chosen (reviewed or discarded records).

    Returns:
        ``(rows, labels)``: int arrays of the chosen rows and their pseudo-labels.
    """
    n, k = probabilities.shape
    top = probabilities.argmax(axis=1)
    part = -np.partition(-probabilities, 1, axis=1)[:, :2] if k > 1 else np.c_[probabilities, np.zeros(n)]
    margin = part[:, 0] - part[:, 1]
    allowed = np.ones(n, dtype=bool) if exclude is None else ~exclude
    rows, labels = [], []
    for c in range(k):
        candidates = np.flatnonzero((top == c) & allowed)
        if not len(candidates):
            continue
        want = max(1, int(round(fraction * n * prior[c])))
        order = candidates[np.argsort(-margin[candidates], kind="stable")][:want]
        rows.append(order)
        labels.append(np.full(len(order), c))
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(labels).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# The head
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class HeadConfig:
    """Knobs of the adapted head (defaults measured with ``python -m annotate simulate``; see docs/adaptive.md).

    Attributes:
        pseudo_fraction: share of the pool taken as pseudo-labels.
        max_pseudo_labels: at most this many (the fraction shrinks on large pools, so refits stay in seconds).
        self_training_rounds: after the first, class-balanced pick from the zero-shot scores, how many times the
            head re-estimates the prior (EM on its own probabilities) and re-picks the pseudo-labels from them.
        c: inverse L2 strength of the logistic regression (scikit-learn's ``C``).
        correction_cs: once there are reviews, candidate strengths (inverse L2, scikit-learn's ``C``) of the
            correction the reviews make to the base head, chosen by cross-validation on the reviewed records (the
            base itself is always a candidate, so the reviews are used only where they measure better).
        pseudo_weights: the other family of candidates: one logistic regression on reviews and pseudo-labels, each
            pseudo-label weighing this much relative to a review.
        max_unreviewed_change: the guard before reviews can judge: when the head would change the top label of more
            than this share of the pool's zero-shot suggestions, the zero-shot scores are kept. Self-training that
            relabels a third of a pool without any human evidence is more often wrong than right: on emotion the
            head changes 32% of the labels and loses 7 points; on AG News and SST-2 it changes 18-20% and gains 9
            and 3 (28% and a gain on a 1,200-text AG News slice); measured with ``python -m annotate simulate``,
            docs/adaptive.md. Those tasks set this number and the margin is thin: a heuristic, not a guarantee,
            which reviews replace (``min_reviews_for_cv``).
        min_reviews_for_cv: fewer reviewed records than this (or a single reviewed class): no cross-validation,
            the pseudo-labels together weigh as much as ``prior_count`` reviews.
        prior_count: the pseudo-labels' total weight, in reviews, before cross-validation takes over.
        cv_folds: folds of the cross-validation on reviewed records.
        seed: seeds the fold split.
        bias_correction: how the label bias of the zero-shot scores is removed over the pool before anything else
            uses them (:func:`service.bias.estimate_bias`: ``floor``, ``batch`` or ``none``); the corrected scores
            are the zero-shot suggestions, the self-training teacher and the reference the reviews measure heads
            against.
        floor_share: the ``floor`` correction's share of ``1 / K`` (:data:`service.bias.FLOOR_SHARE`).
    """

    pseudo_fraction: float = 0.3
    max_pseudo_labels: int = 3000
    self_training_rounds: int = 1
    c: float = 1.0
    correction_cs: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
    pseudo_weights: tuple[float, ...] = (0.1, 0.3)
    max_unreviewed_change: float = 0.3
    pool_weight: float = 0.5
    min_pseudo_precision: float = 0.6
    min_reviews_for_cv: int = 20
    prior_count: float = 200.0
    cv_folds: int = 5
    seed: int = 0
    bias_correction: str = "floor"
    floor_share: float = FLOOR_SHARE


def correct_zero_shot(zero_shot: np.ndarray, config: "HeadConfig") -> BiasEstimate:
    """The label-bias correction of a pool's zero-shot probabilities ``(n, K)`` under ``config``
    (:func:`service.bias.estimate_bias`); ``.apply`` corrects the pool's or any other scores of the same teacher."""
    return estimate_bias(zero_shot, config.bias_correction, floor_share=config.floor_share)


@dataclass
class FitReport:
    """What one fit did. Times are seconds; accuracies are fractions on the reviewed records."""

    revision: str
    mode: str  # "zero-shot" (head not used), "pseudo-labels", "reviews+pseudo-labels", "reviews"
    pool_size: int
    reviewed: int
    pseudo_labels: int
    pseudo_weight: float
    prior: list[float]
    temperature: float
    cv_accuracy: float | None = None
    cv_accuracy_zero_shot: float | None = None
    candidates: dict = field(default_factory=dict)
    changed_share: float | None = None
    correction_c: float | None = None
    fit_seconds: float = 0.0
    note: str = ""
    bias: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


_preloading = None


def preload() -> None:
    """Import the head's fitting library (scikit-learn, about a second) in a background thread, once per process.

    A command calls it before its network and disk reads so that the import overlaps them; :func:`adapt` needs
    nothing else (an import still running when the fit starts is simply waited for by Python's import lock). The
    thread is not a daemon: a command that fails at once exits when the import is done, never in the middle of it.
    """
    global _preloading
    if _preloading is None:
        import threading

        def load() -> None:
            try:
                import sklearn.linear_model  # noqa: F401
            except Exception:  # noqa: BLE001  the fit's own import reports it
                pass

        _preloading = threading.Thread(target=load, name="preload-sklearn")
        _preloading.start()


def _logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray, k: int, c: float, warm=None):
    """Fitted multinomial L2 logistic regression (scikit-learn, lbfgs) as ``(coef (K, d), intercept (K,))``;
    classes absent from ``y`` get a very negative intercept."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    coef = np.zeros((k, x.shape[1]))
    intercept = np.full(k, -30.0)
    if len(present) == 1:
        intercept[present[0]] = 0.0
        return coef, intercept
    model = LogisticRegression(C=c, max_iter=200, tol=1e-3)
    model.fit(x, y, sample_weight=weights)
    if len(present) == 2:  # scikit-learn's binary form: one row for the second class
        coef[present[1]] = model.coef_[0] / 2
        coef[present[0]] = -model.coef_[0] / 2
        intercept[present[1]] = model.intercept_[0] / 2
        intercept[present[0]] = -model.intercept_[0] / 2
    else:
        coef[present] = model.coef_
        intercept[present] = model.intercept_
    return coef, intercept


def pool_pseudo_labels(x: np.ndarray, zero_shot: np.ndarray, config: HeadConfig):
    """Pseudo-labels of a pool by self-training (Gera et al. 2022), with the prior estimated by EM.

    1. Class-balanced pick: the ``pseudo_fraction * n / K`` most confident texts of each class by the zero-shot
       scores (a uniform prior: the zero-shot scores are biased towards some labels, and EM on them inherits the
       bias, measured on AG News: prior 0.07 for Sci/Tech where the truth is 0.25).
    2. A head fitted on those has a known, uniform training prior, so Saerens et al.'s EM on *its* probabilities
       estimates the pool prior properly; the pseudo-labels are picked again from the head's prior-adjusted
       probabilities, in proportion to that prior (``self_training_rounds`` times).

    Args:
        x: ``(n, d)`` embeddings; zero_shot: ``(n, K)``.

    Returns:
        ``(rows, labels, prior)``: picked rows, their pseudo-labels, the estimated prior ``(K,)``.
    """
    n, k = zero_shot.shape
    uniform = np.full(k, 1.0 / k)
    fraction = min(config.pseudo_fraction, config.max_pseudo_labels / max(n, 1))
    rows, y = select_pseudo_labels(zero_shot, uniform, fraction)
    prior = uniform
    train_prior = uniform
    for _ in range(config.self_training_rounds):
        if len(np.unique(y)) < 2:
            break
        coef, intercept = _logistic(x[rows], y, np.ones(len(rows)), k, config.c)
        prior, adjusted = em_prior(softmax(x @ coef.T + intercept, axis=-1), source_prior=train_prior)
        rows, y = select_pseudo_labels(adjusted, prior, fraction)
        train_prior = np.bincount(y, minlength=k) / max(len(y), 1)
    return rows, y, prior


def _held_out_targets(x, p0, coef, intercept, rows_p, exclude, seed: int, limit: int = 4000):
    """Logits and targets to temper a head fitted without reviews: the pool rows it did not train on (up to
    ``limit``, drawn with ``seed``), labelled by the zero-shot argmax. Those rows are the less confident ones, so
    the temperature errs on the side of under-confidence."""
    held = np.ones(len(p0), dtype=bool)
    held[rows_p] = False
    held &= ~exclude
    rows = np.flatnonzero(held)
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))
    return x[rows] @ coef.T + intercept, p0[rows].argmax(axis=1)


def pool_adaptation(x: np.ndarray, zero_shot: np.ndarray, labels, config: HeadConfig | None = None,
                    encoder: dict | None = None) -> tuple:
    """What every refit of one pool shares, computed once: ``(rows, labels, prior, adapted)`` where ``adapted`` is
    the zero-review :class:`Adapted`; pass it to :func:`adapt` as ``pseudo``."""
    from threadpoolctl import threadpool_limits

    config = config or HeadConfig()
    bias = correct_zero_shot(zero_shot, config)
    zero_shot = bias.apply(zero_shot)
    with threadpool_limits(1):
        rows, y, prior = pool_pseudo_labels(np.asarray(x, dtype=np.float64), zero_shot, config)
        zero = _adapt(x, zero_shot, labels, None, {}, (), config, encoder, None, (rows, y, prior), corrected=True)
    zero.bias, zero.report.bias = bias, bias.to_dict(list(labels))
    return rows, y, prior, zero


def _fit_temperature(logits: np.ndarray, gold: np.ndarray) -> float:
    """Temperature on held-out logits, never sharper than they support (:func:`service.calibration.supported_temperature`)."""
    from service.calibration import supported_temperature

    return supported_temperature(logits, gold)


def revision_of(ids, reviewed: dict[str, int], config: HeadConfig, labels) -> str:
    """Content hash of a fit's inputs: pool ids, reviewed ids with their labels, config, labels (16 hex chars)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(labels), asdict(config)], sort_keys=True).encode())
    for rid in ids:
        digest.update(rid.encode())
    for rid in sorted(reviewed):
        digest.update(f"{rid}={reviewed[rid]};".encode())
    return digest.hexdigest()[:16]


@dataclass
class Adapted:
    """The outcome of :func:`adapt`.

    Attributes:
        head: the fitted head, or ``None`` when the zero-shot scores are kept.
        scores: ``(n, K)`` suggestions' probabilities for every pool row (head or zero-shot).
        report: what the fit did.
    """

    head: AdaptiveHead | None
    scores: np.ndarray
    report: FitReport
    bias: BiasEstimate | None = None

    @property
    def agent_suffix(self) -> str:
        return self.head.agent if self.head is not None else "zero-shot"

    def zero_shot(self, probabilities: np.ndarray) -> np.ndarray:
        """Other texts' zero-shot probabilities ``(m, K)`` (same teacher) with this pool's bias correction."""
        return self.bias.apply(probabilities) if self.bias is not None else np.asarray(probabilities)

    def predict(self, embeddings: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
        """The suggestions' probabilities ``(m, K)`` for other texts: the head's, or their corrected zero-shot
        scores when the zero-shot scores are kept."""
        return self.head.predict_proba(embeddings) if self.head is not None else self.zero_shot(zero_shot)


def adapt(embeddings: np.ndarray, zero_shot: np.ndarray, labels, *, ids=None,
          reviewed: dict[int, int] | None = None, discarded=(), config: HeadConfig | None = None,
          encoder: dict | None = None, meta: dict | None = None, pseudo: tuple | None = None) -> Adapted:
    """Fit the adapted head on a pool and its reviews, and score every pool row.

    The zero-shot probabilities are first corrected for label bias over the pool (:func:`correct_zero_shot`,
    ``config.bias_correction``): every later step, and the suggestions when the zero-shot scores are kept, use the
    corrected scores; ``Adapted.bias`` and ``report.bias`` say what was done.

    Args:
        embeddings: ``(n, d)`` unit sentence embeddings of the pool.
        zero_shot: ``(n, K)`` zero-shot probabilities (the teacher), columns in ``labels`` order, as the teacher
            gave them.
        labels: the ``K`` class names.
        ids: ``n`` record ids (for the revision hash; row numbers when ``None``).
        reviewed: ``{row: label index}`` of records people submitted.
        discarded: rows people discarded (fit no label): never pseudo-labelled.
        config: :class:`HeadConfig`.
        encoder: the embeddings' encoder (stored in the head).
        pseudo: what depends on the pool alone, when the caller keeps it between fits: the pseudo-labels
            ``(rows, labels, prior)`` of :func:`pool_pseudo_labels`, optionally followed by the zero-review
            :class:`Adapted` (:func:`pool_adaptation` returns all four); computed here when ``None``.

    Returns:
        :class:`Adapted`. Reviewed rows get scores too (what the head would say), callers leave them alone.

    Raises:
        AdaptError: shapes disagree, a review names an unknown label index, or the pool is empty.
    """
    from threadpoolctl import threadpool_limits

    # Small dense problems: one BLAS thread is 10-20x faster than two when the cores are busy (measured), and no
    # slower when they are idle.
    with threadpool_limits(1):
        return _adapt(embeddings, zero_shot, labels, ids, dict(reviewed or {}), discarded, config or HeadConfig(),
                      encoder, meta, pseudo)


def _adapt(embeddings, zero_shot, labels, ids, reviewed, discarded, config, encoder, meta, pseudo,
           corrected: bool = False) -> Adapted:
    """:func:`adapt`; ``corrected``: ``zero_shot`` is already bias-corrected (the correction is then ``none``)."""
    started = time.perf_counter()
    x = np.asarray(embeddings, dtype=np.float64)
    p0 = np.asarray(zero_shot, dtype=np.float64)
    n, k = p0.shape if p0.ndim == 2 else (0, 0)
    if n == 0 or x.shape[0] != n or k != len(labels) or k < 2:
        raise AdaptError(f"need a non-empty pool with matching embeddings {x.shape} and zero-shot scores "
                         f"{p0.shape} for {len(labels)} labels (at least 2)")
    bias = correct_zero_shot(p0, config) if not corrected else estimate_bias(p0, "none")
    p0 = bias.apply(p0)
    adapted = _fit(x, p0, labels, ids, reviewed, discarded, config, encoder, meta, pseudo, started, n, k)
    adapted.bias = bias
    adapted.report.bias = bias.to_dict(list(labels))
    return adapted


def _fit(x, p0, labels, ids, reviewed, discarded, config, encoder, meta, pseudo, started, n, k) -> Adapted:
    if any(not 0 <= v < k for v in reviewed.values()) or any(not 0 <= r < n for r in reviewed):
        raise AdaptError("a review names a label index or a row outside the pool")
    ids = [str(i) for i in range(n)] if ids is None else list(ids)
    revision = revision_of(ids, {ids[r]: v for r, v in reviewed.items()}, config, labels)
    exclude = np.zeros(n, dtype=bool)
    exclude[list(reviewed)] = True
    exclude[list(discarded)] = True
    rows_h = np.fromiter(reviewed.keys(), dtype=np.int64, count=len(reviewed))
    y_h = np.fromiter(reviewed.values(), dtype=np.int64, count=len(reviewed))

    # Pseudo-labels (self-training): the pool's own confident texts, as labelled by a head fitted to it; picked on
    # the whole pool, then the reviewed and discarded rows are dropped.
    rows_p, y_p, prior = pseudo[:3] if pseudo is not None else pool_pseudo_labels(x, p0, config)
    keep = ~exclude[rows_p]
    rows_p, y_p = rows_p[keep], y_p[keep]
    base = dict(revision=revision, pool_size=n, reviewed=len(reviewed), pseudo_labels=len(rows_p),
                prior=[round(float(v), 4) for v in prior])

    def train(weight: float, train_rows_h: np.ndarray):
        xs = [x[rows_p]] if weight > 0 else []
        ys = [y_p] if weight > 0 else []
        ws = [np.full(len(rows_p), weight)] if weight > 0 else []
        if len(train_rows_h):
            xs.append(x[rows_h[train_rows_h]])
            ys.append(y_h[train_rows_h])
            ws.append(np.ones(len(train_rows_h)))
        if not xs:
            return None
        return _logistic(np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), k, config.c)

    n_h = len(reviewed)
    zero_shot_acc = float((p0[rows_h].argmax(axis=1) == y_h).mean()) if n_h else None
    if n_h == 0:
        return _zero_review(x, p0, labels, rows_p, y_p, exclude, config, encoder, revision, meta, base, started)

    # The pool-adapted head of zero reviews: a function of the pool alone (callers may pass it in ``pseudo``).
    if pseudo is not None and len(pseudo) > 3:
        pool_head = pseudo[3]
    else:
        pool_head = _adapt(x, p0, labels, ids, {}, (), config, encoder, meta, pseudo, corrected=True)
    if n_h < config.min_reviews_for_cv or len(np.unique(y_h)) < 2:
        return _few_reviews(p0, pool_head, rows_h, y_h, zero_shot_acc, config, base, started)

    # Enough reviews: a correction of a base head, learnt from the reviews, its strength chosen by cross-validation.
    # The base is the pool-adapted head (pseudo-labels) when the guard let it through, else the zero-shot scores as
    # a linear map of the embeddings; whichever of the two is more accurate on the reviewed records.
    bases = {"zero-shot": _linearize(x, p0)}
    if pool_head.head is not None:
        h = pool_head.head
        bases["pseudo-labels"] = (h.coef / h.temperature, h.intercept / h.temperature)
    base_accuracy = {name: float(((x[rows_h] @ w.T + b).argmax(axis=1) == y_h).mean()) for name, (w, b) in bases.items()}
    base_name = max(base_accuracy, key=lambda name: (base_accuracy[name], name == "pseudo-labels"))
    base_coef, base_intercept = bases[base_name]
    z0 = x[rows_h] @ base_coef.T + base_intercept
    folds = _folds(y_h, config.cv_folds, config.seed)
    candidates: dict = {0.0: base_accuracy[base_name]}
    oof_logits: dict[float, np.ndarray] = {0.0: z0}
    for c in config.correction_cs:
        logits = np.zeros((n_h, k))
        for f in range(folds.max() + 1):
            train_idx, test_idx = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
            w1, b1 = _offset_logistic(x[rows_h[train_idx]], z0[train_idx], y_h[train_idx], k, c)
            logits[test_idx] = z0[test_idx] + x[rows_h[test_idx]] @ w1.T + b1
        oof_logits[c] = logits
        candidates[c] = float((logits.argmax(axis=1) == y_h).mean())
    # The second family: one logistic regression on the reviews and the pseudo-labels together, the pseudo-labels
    # down-weighted (Lee 2013's pseudo-label loss weight); it wins where the pool's geometry matters more than the
    # base's scores (AG News at 100-300 reviews).
    weighted: dict[float, float] = {}
    if len(rows_p):
        for weight in config.pseudo_weights:
            logits = np.zeros((n_h, k))
            for f in range(folds.max() + 1):
                train_idx, test_idx = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
                coef_f, int_f = train(weight, train_idx)
                logits[test_idx] = x[rows_h[test_idx]] @ coef_f.T + int_f
            oof_logits[-weight] = logits  # negative keys: the weighted family
            weighted[weight] = float((logits.argmax(axis=1) == y_h).mean())
    best = max(candidates, key=lambda c: (candidates[c], -c))  # ties: the weaker correction
    best_weight = max(weighted, key=lambda w: (weighted[w], w)) if weighted else None
    report_candidates = {"zero-shot": round(zero_shot_acc, 4),
                         **{f"base={name}": round(a, 4) for name, a in base_accuracy.items()},
                         **{f"C={c:g}": round(a, 4) for c, a in candidates.items() if c > 0},
                         **{f"pseudo_weight={w:g}": round(a, 4) for w, a in weighted.items()}}
    # Never worse than zero-shot on what people reviewed: every candidate is measured out of fold, and the zero-shot
    # scores themselves (not their linearization, exact only for the embedding method) are measured as they are
    # served; a head serves only when it measured strictly better (ties keep the zero-shot scores).
    correction_acc = None if (best == 0 and base_name == "zero-shot") else candidates[best]
    weighted_acc = weighted[best_weight] if best_weight is not None else None
    best_head = max((a for a in (correction_acc, weighted_acc) if a is not None), default=None)
    if best_head is None or best_head <= zero_shot_acc:
        shown = "-" if best_head is None else f"{best_head:.4f}"
        report = FitReport(mode="zero-shot", pseudo_weight=0.0, correction_c=0.0, temperature=1.0,
                           cv_accuracy=zero_shot_acc, cv_accuracy_zero_shot=zero_shot_acc,
                           candidates=report_candidates, fit_seconds=time.perf_counter() - started,
                           note=f"kept the zero-shot scores: no head measured better on the {n_h} reviewed records "
                                f"(best head {shown} out of fold, zero-shot {zero_shot_acc:.4f})", **base)
        return Adapted(None, p0, report)
    if weighted_acc is not None and (correction_acc is None or weighted_acc > correction_acc):
        coef, intercept = train(best_weight, np.arange(n_h))
        temperature = _fit_temperature(oof_logits[-best_weight], y_h)
        head = AdaptiveHead(labels, coef, intercept, temperature, encoder, revision,
                            {"mode": "reviews+pseudo-labels", "prior": base["prior"], "reviewed": n_h,
                             "pseudo_labels": len(rows_p), "pseudo_weight": best_weight,
                             "cv_accuracy": weighted[best_weight], **(meta or {})})
        report = FitReport(mode="reviews+pseudo-labels", pseudo_weight=best_weight, temperature=temperature,
                           cv_accuracy=weighted[best_weight], cv_accuracy_zero_shot=zero_shot_acc,
                           candidates=report_candidates, fit_seconds=time.perf_counter() - started,
                           note=f"reviews and pseudo-labels (weight {best_weight:g}): {weighted[best_weight]:.4f} out of "
                                f"fold on the {n_h} reviewed records against {zero_shot_acc:.4f} for zero-shot",
                           **base)
        return Adapted(head, head.predict_proba(x), report)
    w1, b1 = _offset_logistic(x[rows_h], z0, y_h, k, best) if best > 0 else (0.0, 0.0)
    temperature = _fit_temperature(oof_logits[best], y_h)
    mode = f"reviews+{base_name}" if best > 0 else base_name
    head = AdaptiveHead(labels, base_coef + w1, base_intercept + b1, temperature, encoder, revision,
                        {"mode": mode, "prior": base["prior"], "reviewed": n_h, "pseudo_labels": len(rows_p),
                         "correction_c": best, "cv_accuracy": candidates[best], **(meta or {})})
    report = FitReport(mode=mode, pseudo_weight=0.0, correction_c=float(best), temperature=temperature,
                       cv_accuracy=candidates[best],
                       cv_accuracy_zero_shot=zero_shot_acc, candidates=report_candidates,
                       fit_seconds=time.perf_counter() - started,
                       note=f"{mode} (correction C {best:g}): {candidates[best]:.4f} out of fold on the {n_h} reviewed "
                            f"records against {zero_shot_acc:.4f} for zero-shot", **base)
    return Adapted(head, head.predict_proba(x), report)


def _few_reviews(p0, pool_head: "Adapted", rows_h, y_h, zero_shot_acc: float, config: "HeadConfig", base: dict,
                 started: float) -> "Adapted":
    """Too few reviews (or one reviewed label) to cross-validate a fit on them: serve whichever of the zero-shot
    scores and the pool-adapted head (neither trained on the reviews, so both are measured honestly on them) is more
    accurate on the reviewed records; ties keep the zero-review decision."""
    n_h = len(rows_h)
    why = (f"only {len(np.unique(y_h))} reviewed label" if len(np.unique(y_h)) < 2
           else f"{n_h} reviews (cross-validation from {config.min_reviews_for_cv})")
    if pool_head.head is None:
        report = FitReport(mode="zero-shot", pseudo_weight=0.0, temperature=1.0, cv_accuracy=zero_shot_acc,
                           cv_accuracy_zero_shot=zero_shot_acc, fit_seconds=time.perf_counter() - started,
                           changed_share=pool_head.report.changed_share,
                           note=f"kept the zero-shot scores ({why}; no pool-adapted head: "
                                f"{pool_head.report.note or 'none'})", **base)
        return Adapted(None, p0, report)
    head_acc = float((pool_head.scores[rows_h].argmax(axis=1) == y_h).mean())
    if head_acc < zero_shot_acc:
        report = FitReport(mode="zero-shot", pseudo_weight=0.0, temperature=1.0, cv_accuracy=zero_shot_acc,
                           cv_accuracy_zero_shot=zero_shot_acc, fit_seconds=time.perf_counter() - started,
                           candidates={"zero-shot": round(zero_shot_acc, 4), "pseudo-labels": round(head_acc, 4)},
                           note=f"kept the zero-shot scores ({why}): the pool-adapted head was less accurate on the "
                                f"{n_h} reviewed records ({head_acc:.4f} against {zero_shot_acc:.4f})", **base)
        return Adapted(None, p0, report)
    kept = pool_head.report
    report = FitReport(**{**kept.to_dict(), **base, "cv_accuracy": head_acc,
                          "cv_accuracy_zero_shot": zero_shot_acc,
                          "candidates": {"zero-shot": round(zero_shot_acc, 4), "pseudo-labels": round(head_acc, 4)},
                          "fit_seconds": time.perf_counter() - started,
                          "note": f"kept the pool-adapted head ({why}): {head_acc:.4f} on the {n_h} reviewed records "
                                  f"against {zero_shot_acc:.4f} for zero-shot"})
    return Adapted(pool_head.head, pool_head.scores, report)


def _zero_review(x, p0, labels, rows_p, y_p, exclude, config, encoder, revision, meta, base, started) -> "Adapted":
    """The head before any review: a logistic regression on the pseudo-labels, tempered on the pool rows it did not
    train on, kept only when the guards (:func:`unreviewed_guard`) find nothing against it."""
    k = len(labels)
    if not len(rows_p) or len(np.unique(y_p)) < 2:
        return Adapted(None, p0, FitReport(mode="zero-shot", pseudo_weight=0.0, temperature=1.0,
                                           fit_seconds=time.perf_counter() - started,
                                           note="kept the zero-shot scores: fewer than two labels among the "
                                                "pseudo-labels", **base))
    coef, intercept = _logistic(x[rows_p], y_p, np.ones(len(rows_p)), k, config.c)
    temperature = _fit_temperature(*_held_out_targets(x, p0, coef, intercept, rows_p, exclude, config.seed))
    if config.pool_weight < 1.0:
        # log-linear pool with the zero-shot scores (linear in the embeddings: exact for the embedding method)
        w = config.pool_weight
        lin_coef, lin_intercept = _linearize(x, p0)
        coef = w * coef / temperature + (1 - w) * lin_coef
        intercept = w * intercept / temperature + (1 - w) * lin_intercept
        temperature = 1.0
    head = AdaptiveHead(labels, coef, intercept, temperature, encoder, revision,
                        {"mode": "pseudo-labels", "prior": base["prior"], "reviewed": 0,
                         "pseudo_labels": len(rows_p), "pool_weight": config.pool_weight, **(meta or {})})
    scores = head.predict_proba(x)
    changed = float((scores.argmax(axis=1) != p0.argmax(axis=1)).mean())
    refused = unreviewed_guard(p0, scores, config, pseudo_precision(p0, config))
    if refused:
        report = FitReport(mode="zero-shot", pseudo_weight=1.0, temperature=temperature,
                           fit_seconds=time.perf_counter() - started, changed_share=changed,
                           note=f"kept the zero-shot scores (no review yet): {refused}", **base)
        return Adapted(None, p0, report)
    report = FitReport(mode="pseudo-labels", pseudo_weight=1.0, temperature=temperature,
                       fit_seconds=time.perf_counter() - started, changed_share=changed,
                       note=f"pool-adapted head (no review yet): changes {changed:.0%} of the zero-shot labels",
                       **base)
    return Adapted(head, scores, report)


def pseudo_precision(zero_shot: np.ndarray, config: "HeadConfig") -> np.ndarray:
    """``(K,)`` expected share of right labels among each class's first pseudo-labels (the class-balanced pick of
    :func:`pool_pseudo_labels`), by the zero-shot scores themselves: the mean zero-shot probability of the picked
    label. The shipped calibrations make the zero-shot scores roughly calibrated (ECE 0.04-0.11 on the six tasks of
    docs/adaptive.md), so this is an estimate without any review of how clean each class's pseudo-labels are; ``nan``
    for a class with no pick."""
    n, k = zero_shot.shape
    fraction = min(config.pseudo_fraction, config.max_pseudo_labels / max(n, 1))
    rows, labels = select_pseudo_labels(zero_shot, np.full(k, 1.0 / k), fraction)
    return np.array([zero_shot[rows[labels == c], c].mean() if (labels == c).any() else np.nan for c in range(k)])


def unreviewed_guard(zero_shot: np.ndarray, scores: np.ndarray, config: "HeadConfig",
                     precision: np.ndarray | None = None) -> str:
    """Why a head fitted without any review must not replace the zero-shot suggestions (``""``: no objection).

    Without reviews nothing can measure the head, so the guards are limits, none of them a guarantee:

    * the pseudo-labels of some class are expected to be right less often than
      :attr:`HeadConfig.min_pseudo_precision` (:func:`pseudo_precision`): self-training learns such a class's
      errors (emotion: the zero-shot's confident "love" and "surprise" picks are expected right 0.49 and 0.54 of the
      time, and were 0.36 and 0.18; the head lost 4 to 13 points, whatever the prior estimate);
    * it changes the top label of more than :attr:`HeadConfig.max_unreviewed_change` of the pool.

    Args:
        zero_shot, scores: ``(n, K)`` zero-shot and head probabilities of the pool.
        precision: ``(K,)`` of :func:`pseudo_precision` (computed when ``None``).
    """
    precision = pseudo_precision(zero_shot, config) if precision is None else precision
    worst = int(np.nanargmin(precision)) if np.isfinite(precision).any() else None
    if worst is not None and precision[worst] < config.min_pseudo_precision:
        return (f"the pseudo-labels of class {worst} are expected right only {precision[worst]:.0%} of the time by the "
                f"zero-shot scores (less than {config.min_pseudo_precision:.0%})")
    changed = float((scores.argmax(axis=1) != zero_shot.argmax(axis=1)).mean())
    if changed > config.max_unreviewed_change:
        return (f"the head would change {changed:.0%} of the zero-shot labels (more than "
                f"{config.max_unreviewed_change:.0%}) with no review to confirm it")
    return ""


def _linearize(x: np.ndarray, probabilities: np.ndarray, ridge: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """A linear map ``(coef (K, d), intercept (K,))`` whose softmax reproduces ``probabilities`` from ``x``: ridge
    least squares on the row-centred log-probabilities. Exact for the embedding method (its logits are cosines with
    the hypotheses' embeddings over a temperature), a least-squares fit for other methods; it lets a head that
    starts from the zero-shot scores be saved and served as one linear layer."""
    logp = np.log(np.clip(probabilities, 1e-12, 1.0))
    target = logp - logp.mean(axis=1, keepdims=True)
    mean_x, mean_t = x.mean(axis=0), target.mean(axis=0)
    xc = x - mean_x
    coef = np.linalg.solve(xc.T @ xc + ridge * len(x) * np.eye(x.shape[1]), xc.T @ (target - mean_t)).T
    return coef, mean_t - coef @ mean_x


def _offset_logistic(x: np.ndarray, offset: np.ndarray, y: np.ndarray, k: int, c: float,
                     max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression with a fixed offset: ``softmax(offset + x @ W.T + b)``, L2 penalty
    ``||W||^2 / (2 c)`` (scikit-learn's ``C`` convention, the loss summed over rows), fitted by L-BFGS (scipy).
    The offset carries the base head, so a small ``c`` keeps the base and a large one lets the reviews rewrite it.

    Returns:
        ``(W (K, d), b (K,))``.
    """
    from scipy.optimize import minimize

    n, d = x.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0

    def loss(theta: np.ndarray):
        w, b = theta[:k * d].reshape(k, d), theta[k * d:]
        z = offset + x @ w.T + b
        z -= z.max(axis=1, keepdims=True)
        logsum = np.log(np.exp(z).sum(axis=1))
        p = np.exp(z - logsum[:, None])
        value = float((logsum - (z * onehot).sum(axis=1)).sum() + (w * w).sum() / (2 * c))
        g = p - onehot
        return value, np.concatenate([(g.T @ x + w / c).ravel(), g.sum(axis=0)])

    result = minimize(loss, np.zeros(k * d + k), jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "gtol": 1e-5})
    return result.x[:k * d].reshape(k, d), result.x[k * d:]


def _folds(y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Stratified fold index per row (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(y), dtype=np.int64)
    n_folds = max(2, min(n_folds, len(y)))
    offset = 0
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rows = rows[rng.permutation(len(rows))]
        folds[rows] = (np.arange(len(rows)) + offset) % n_folds
        offset += len(rows)
    return folds
