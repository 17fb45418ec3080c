"""Uncertainty of the teacher's score vectors: confidence, margin and entropy (numpy, vectorised).

All functions take ``scores`` of shape ``(n_texts, n_labels)``, probabilities in [0, 1], and return
float64 arrays of shape ``(n_texts,)``.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def _as_2d(scores) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"scores must have shape (n_texts, n_labels), got {array.shape}")
    return array


def confidence(scores) -> np.ndarray:
    """Top score of each row (the suggestion's score in single-label mode)."""
    return _as_2d(scores).max(axis=1)


def margin(scores) -> np.ndarray:
    """Top score minus the second; equals the top score when there is a single label."""
    array = _as_2d(scores)
    if array.shape[1] == 1:
        return array[:, 0].copy()
    top2 = -np.partition(-array, 1, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def entropy(scores, multi_label: bool = False) -> np.ndarray:
    """Normalised entropy in [0, 1]: 1 is the most uncertain.

    Single-label rows are one distribution: ``-sum(p log p) / log(n_labels)`` (0 with one label).
    Multi-label rows are independent yes/no decisions: the mean binary entropy ``H(p)/log 2`` over labels.
    """
    array = np.clip(_as_2d(scores), _EPS, 1.0)
    if multi_label:
        q = np.clip(1.0 - array, _EPS, 1.0)
        return (-(array * np.log(array) + q * np.log(q)) / np.log(2)).mean(axis=1)
    if array.shape[1] == 1:
        return np.zeros(array.shape[0])
    return -(array * np.log(array)).sum(axis=1) / np.log(array.shape[1])


def summarize(scores, multi_label: bool = False) -> dict[str, np.ndarray]:
    """``{"confidence", "margin", "entropy"}``, each of shape ``(n_texts,)``."""
    return {"confidence": confidence(scores), "margin": margin(scores), "entropy": entropy(scores, multi_label)}
