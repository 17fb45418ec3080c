"""The ``ensemble`` zero-shot method: the NLI and embedding methods' probabilities combined.

Both methods score the same (text, label) pairs; the ensemble takes a weighted mean of their
calibrated log-probabilities, ``z = w * log p_nli + (1 - w) * log p_emb`` (a product of experts, as
in Hinton 2002), and renormalises it with its own fitted temperature: ``softmax(z / T)`` across labels.
For multi-label it combines the per-label log-odds the same way, ``sigmoid(scale * (w * logit p_nli +
(1 - w) * logit p_emb) + bias)``. ``w`` and ``T`` are fitted by :func:`service.calibration.fit_ensemble`.
Its cost is the sum of both methods' (N x K + N + K passes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.calibration import Calibration, ensemble_logits, sigmoid, softmax
from service.embedding import EmbeddingClassifier
from service.zeroshot import Descriptions, ZeroShotClassifier, ZeroShotMethod

_EPS = 1e-12


def logit(p: np.ndarray) -> np.ndarray:
    """Log-odds ``log(p / (1 - p))`` of probabilities, clipped to [1e-12, 1 - 1e-12]."""
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


class EnsembleClassifier(ZeroShotMethod):
    """Weighted mean of the NLI and embedding log-probabilities (see the module docstring).

    Args:
        nli, embedding: the two methods, each with its own calibration.
        calibration: ``weight`` (of NLI), ``temperature``, and the multi-label Platt numbers; the
            default (weight 0.5, temperature 1) is an unfitted geometric mean.
    """

    name = "ensemble"

    def __init__(self, nli: ZeroShotClassifier, embedding: EmbeddingClassifier, *,
                 calibration: Calibration = Calibration()):
        self.nli = nli
        self.embedding = embedding
        self.calibration = calibration

    def raw(self, texts: list[str], labels: list[str], *, hypothesis_template: str,
            label_descriptions: Descriptions | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(nli logits (n, k, classes), cosine similarities (n, k))``."""
        options = dict(hypothesis_template=hypothesis_template, label_descriptions=label_descriptions)
        return self.nli.raw(texts, labels, **options), self.embedding.raw(texts, labels, **options)

    def sequences(self, n_texts: int, n_labels: int) -> int:
        """Both methods' sequences."""
        return self.nli.sequences(n_texts, n_labels) + self.embedding.sequences(n_texts, n_labels)

    def window(self, labels: list[str], *, hypothesis_template: str,
               label_descriptions: Descriptions | None = None) -> tuple[Any, int]:
        """The narrower of the two models' windows (with its tokenizer), so both read every chunk whole."""
        options = dict(hypothesis_template=hypothesis_template, label_descriptions=label_descriptions)
        return min(self.nli.window(labels, **options), self.embedding.window(labels, **options), key=lambda w: w[1])

    def cut_long(self, texts: list[str], labels: list[str], *, hypothesis_template: str,
                 label_descriptions: Descriptions | None = None) -> tuple[list[str], list[bool]]:
        """Each text cut past the wider of the two windows; truncated when either model reads only part of it."""
        options = dict(hypothesis_template=hypothesis_template, label_descriptions=label_descriptions)
        nli, nli_cut = self.nli.cut_long(texts, labels, **options)
        emb, emb_cut = self.embedding.cut_long(texts, labels, **options)
        return [max(a, b, key=len) for a, b in zip(nli, emb)], [a or b for a, b in zip(nli_cut, emb_cut)]

    def probabilities(self, raw: tuple[np.ndarray, np.ndarray], *, multi_label: bool) -> np.ndarray:
        p_nli = self.nli.probabilities(raw[0], multi_label=multi_label)
        p_emb = self.embedding.probabilities(raw[1], multi_label=multi_label)
        return combine(p_nli, p_emb, self.calibration, multi_label=multi_label)


def combine(p_nli: np.ndarray, p_embedding: np.ndarray, calibration: Calibration, *, multi_label: bool) -> np.ndarray:
    """Ensemble probabilities ``(n, k)`` from the two methods' ``(n, k)`` probabilities."""
    w = calibration.weight
    if multi_label:
        z = w * logit(p_nli) + (1 - w) * logit(p_embedding)
        return sigmoid(calibration.binary_scale * z + calibration.binary_bias)
    z = ensemble_logits(np.log(np.clip(p_nli, _EPS, None)), np.log(np.clip(p_embedding, _EPS, None)), w)
    return softmax(z / calibration.temperature, axis=-1)
