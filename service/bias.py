"""Label bias of zero-shot scores over a pool, estimated and removed without any gold label.

A zero-shot model favours some candidate labels whatever the text: the packaged sentence encoder labels 86% of a
balanced IMDB sample ``positive`` through ``The sentiment of this review is {}.``, the NLI teacher 98-99% of SST-2
and of the customer-review sentences. That bias is a property of the model, the template and the domain, not of the
pool, so it can be estimated from the pool's own scores. What cannot be estimated from them is the pool's true label
prior: removing the bias by assuming a uniform prior (batch calibration) also removes a real imbalance.

Corrections (all single-label, all shifts of the log-probabilities by one ``(K,)`` vector ``b``:
``p' = softmax(log p + b)``):

* ``floor`` (the default of the annotation loop): the smallest raise of the starved labels so that every candidate
  label is the top label of at least ``floor_share / K`` of the pool; labels that already reach it are not moved, and
  the correction is ``0`` when none is starved. The rule: a team puts a label among its candidates because it
  occurs in its data, so a zero-shot model that gives a candidate label almost none of the pool is more likely
  biased against it than the pool is that skewed; a label that keeps a fair share is left alone, however far from
  uniform the rest is. ``floor_share = 0.5`` was chosen on pools used for tuning only (the tune halves of the dev
  tasks IMDB, CR, TweetEval sentiment and GoEmotions, the SST-2, emotion and AG News train pools;
  ``benchmarks/bias_correction.py``, docs/adaptive.md "Zero-shot without class bias"), as the largest share that
  cost no tuning pool more than one point with either method.
* ``batch``: batch calibration (Zhou et al. 2023, "Batch Calibration: Rethinking Calibration for In-Context Learning
  and Prompt Engineering", ICLR 2024): subtract each label's mean log-probability over the pool, i.e. assume a
  balanced pool. Right for balanced pools (IMDB +7 to +13 points with the embedding method), wrong for imbalanced
  ones (emotion -5, CR -3).
* ``none``.

Measured and not kept as a default (same benchmark): contextual calibration with content-free inputs (Zhao et al.
2021), domain-context calibration with random in-domain word sequences (Fei et al. 2023), EM re-estimation of the
prior on the corrected probabilities (Saerens et al. 2002) and a tied-covariance Gaussian mixture in logit space:
each lost 2 to 14 points on some tuning pool (the prior estimates of EM and the mixture were as far from the truth as
the uncorrected scores: the zero-shot signal is too weak for them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

BiasCorrection = Literal["none", "floor", "batch"]
CORRECTIONS: tuple[str, ...] = ("none", "floor", "batch")
#: Default share of ``1 / K`` every candidate label is raised to by ``floor`` (see the module docstring).
FLOOR_SHARE = 0.5
_EPS = 1e-12


@dataclass
class BiasEstimate:
    """A correction fitted on one pool.

    Attributes:
        method: ``none``, ``floor`` or ``batch``.
        shift: ``(K,)`` added to the log-probabilities (all zeros: nothing corrected).
        shares_before, shares_after: ``(K,)`` share of the pool whose top label each label is, before and after.
        raised: labels (indices) the correction moved up.
        note: one line saying what it did, or why it did nothing.
    """

    method: str
    shift: np.ndarray
    shares_before: np.ndarray
    shares_after: np.ndarray
    raised: list[int] = field(default_factory=list)
    note: str = ""

    @property
    def corrected(self) -> bool:
        """Whether the correction changes any score."""
        return bool(np.any(self.shift != 0))

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """``(n, K)`` probabilities of any texts (the pool's, or others scored the same way), corrected."""
        p = np.asarray(probabilities, dtype=np.float64)
        if not self.corrected:
            return p
        return _softmax(np.log(np.clip(p, _EPS, 1.0)) + self.shift)

    def to_dict(self, labels: list[str] | None = None) -> dict:
        """JSON-ready form; with ``labels``, the raised labels by name."""
        out = asdict(self)
        for key in ("shift", "shares_before", "shares_after"):
            out[key] = [round(float(v), 6) for v in out[key]]
        if labels is not None:
            out["raised"] = [labels[i] for i in self.raised]
        return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_label_shares(logits: np.ndarray) -> np.ndarray:
    """``(K,)`` share of the rows whose top entry is each column (ties: the first)."""
    n, k = logits.shape
    return np.bincount(np.argmax(logits, axis=1), minlength=k) / max(n, 1)


def floor_shift(log_probabilities: np.ndarray, floor_share: float = FLOOR_SHARE, max_rounds: int | None = None
                ) -> np.ndarray:
    """The smallest non-negative ``(K,)`` shift after which every label is the top label of at least
    ``ceil(floor_share * n / K)`` rows.

    Greedy: the label furthest below the floor is raised until its ``m``-th best row becomes its own, ``m`` the floor
    plus a 2% margin (raising a label takes rows from the others, so a label just at the floor can fall below it
    when another is raised; the margin keeps two starved labels from taking rows back and forth). The loop repeats
    until none is below, at most ``max_rounds`` times (default ``50 K``).

    Args:
        log_probabilities: ``(n, K)``; any per-row constant is irrelevant.
        floor_share: in [0, 1): 0 gives no shift, 1 would ask for a uniform split.

    Raises:
        ValueError: ``floor_share`` outside [0, 1), or not a 2-D array with at least 2 columns.
    """
    z = np.asarray(log_probabilities, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"need (n, K >= 2) log-probabilities, got shape {z.shape}")
    if not 0.0 <= floor_share < 1.0:
        raise ValueError(f"floor_share must lie in [0, 1), got {floor_share}")
    n, k = z.shape
    shift = np.zeros(k)
    need = int(np.ceil(floor_share * n / k))
    if need == 0:
        return shift
    aim = min(n, need + int(np.ceil(0.02 * need)))
    for _ in range(max_rounds or 50 * k):
        current = z + shift
        counts = np.bincount(np.argmax(current, axis=1), minlength=k)
        low = int(np.argmin(counts))
        if counts[low] >= need:
            break
        others = np.delete(current, low, axis=1).max(axis=1)
        gap = np.sort(others - current[:, low])  # raise by gap[i] and row i turns to ``low``
        shift[low] += max(0.0, float(gap[aim - 1])) + 1e-9
    return shift


def estimate_bias(probabilities: np.ndarray, method: str = "floor", *, floor_share: float = FLOOR_SHARE
                  ) -> BiasEstimate:
    """Estimate the label bias of a pool's zero-shot probabilities (see the module docstring).

    Args:
        probabilities: ``(n, K)`` single-label zero-shot probabilities of the pool (rows sum to 1).
        method: ``none``, ``floor`` or ``batch``.

    Returns:
        :class:`BiasEstimate`; ``.apply(p)`` corrects these or any other texts' probabilities.

    Raises:
        ValueError: unknown ``method``, an empty pool, fewer than 2 labels, or a bad ``floor_share``.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"unknown bias correction {method!r}: use one of {', '.join(CORRECTIONS)}")
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"need the probabilities of a non-empty pool over at least 2 labels, got shape {p.shape}")
    logp = np.log(np.clip(p, _EPS, 1.0))
    logp -= logp.mean(axis=1, keepdims=True)
    before = top_label_shares(logp)
    k = p.shape[1]
    if method == "none":
        shift = np.zeros(k)
    elif method == "batch":
        shift = -logp.mean(axis=0)
        shift -= shift.mean()
    else:
        shift = floor_shift(logp, floor_share)
    after = top_label_shares(logp + shift)
    raised = [int(i) for i in np.flatnonzero(shift > 0)] if method == "floor" else []
    if method == "none":
        note = "no bias correction"
    elif method == "batch":
        note = "batch calibration: each label's mean log-probability over the pool removed (assumes a balanced pool)"
    elif raised:
        note = (f"raised {len(raised)} starved label(s) to at least {floor_share:g}/K of the pool: "
                + ", ".join(f"#{i} {before[i]:.0%} -> {after[i]:.0%}" for i in raised))
    else:
        note = f"no correction: every label is the top label of at least {floor_share:g}/K of the pool"
    return BiasEstimate(method, shift, before, after, raised, note)
