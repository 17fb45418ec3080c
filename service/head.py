"""The adapted head's file format and scoring: what the server serves, whoever fitted it.

Two kinds of head, both saved as a directory of two files (``head.json``: kind, labels, encoder, revision, training
meta; ``weights.npz``: ``coef`` and ``intercept``, plus ``thresholds`` for the one-vs-rest head):

* :class:`AdaptiveHead` (``"kind": "adaptive-head"``), single-label: a multinomial logistic regression on frozen
  sentence embeddings with a temperature (fitted by ``annotate.adaptive``);
* :class:`OneVsRestHead` (``"kind": "one-vs-rest-head"``), multi-label: ``K`` independent binary logistic
  regressions on the same embeddings, a sigmoid score and a decision threshold per label (fitted by
  ``annotate.multilabel``).

``service.classify`` serves both (``python -m service --classifier NAME=DIR``, :func:`load_head` tells them apart);
``train.head_teacher`` reads single-label heads as a student's teacher. This module is the one place that reads and
writes the format, so the server never imports the annotation loop.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from service.atomic import atomic_directory, check_target
from service.calibration import sigmoid, softmax

HEAD_FILE = "head.json"
WEIGHTS_FILE = "weights.npz"
SINGLE_LABEL_KIND = "adaptive-head"
MULTI_LABEL_KIND = "one-vs-rest-head"


class AdaptError(ValueError):
    """The inputs cannot train a head (shapes disagree, labels unknown, nothing to learn from)."""


class AdaptiveHead:
    """Multinomial logistic regression on sentence embeddings, with a temperature.

    ``predict_proba(X)`` = ``softmax((X @ coef.T + intercept) / temperature)``.

    Attributes:
        labels: class names, column order of every score matrix.
        coef: ``(K, d)``; intercept: ``(K,)``; temperature: > 0.
        encoder: ``{"model_id", "fingerprint", "dim"}`` of the sentence encoder whose embeddings it reads.
        revision: content hash of what it was trained on (pool ids, reviews, config).
        meta: training counts, mode, prior, hypothesis template.
    """

    multi_label = False

    def __init__(self, labels, coef: np.ndarray, intercept: np.ndarray, temperature: float = 1.0,
                 encoder: dict | None = None, revision: str = "", meta: dict | None = None) -> None:
        self.labels = list(labels)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.temperature = float(temperature)
        self.encoder = dict(encoder or {})
        self.revision = revision
        self.meta = dict(meta or {})

    @property
    def agent(self) -> str:
        """The suggestion agent Argilla shows: ``adaptive-head:<revision>``."""
        return f"adaptive-head:{self.revision[:12]}"

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """``(n, K)`` untempered logits of ``(n, d)`` embeddings.

        Raises:
            AdaptError: ``d`` differs from the head's.
        """
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.coef.shape[1]:
            raise AdaptError(f"embeddings of shape {x.shape} do not fit a head of dimension {self.coef.shape[1]}")
        return x @ self.coef.T + self.intercept

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """``(n, K)`` calibrated probabilities, rows summing to 1."""
        return softmax(self.logits(embeddings) / self.temperature, axis=-1)

    # persistence --------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``head.json`` and ``weights.npz`` into ``directory``, atomically: both files are written into a
        staging folder beside it and swapped into place (:func:`service.atomic.atomic_directory`), so a reader, or
        a process killed mid-save, never sees half a head. The directory is what
        ``python -m service --classifier NAME=DIR`` serves on its sentence encoder.

        Raises:
            AdaptError: ``directory`` is a file, or a non-empty folder that holds no head (a save replaces the
                whole folder; nothing is written).
        """
        directory = Path(directory)
        try:
            check_target(directory, is_head_dir)
        except FileExistsError as exc:
            raise AdaptError(f"cannot save the head: {exc}") from None
        head = {"kind": SINGLE_LABEL_KIND, "format_version": 1, "labels": self.labels, "temperature": self.temperature,
                "encoder": self.encoder, "revision": self.revision, "agent": self.agent, **self.meta}
        with atomic_directory(directory, replaceable=is_head_dir) as staging:
            np.savez(staging / WEIGHTS_FILE, coef=self.coef.astype(np.float32),
                     intercept=self.intercept.astype(np.float32))
            (staging / HEAD_FILE).write_text(json.dumps(head, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "AdaptiveHead":
        """Read a head directory written by :meth:`save`.

        Raises:
            AdaptError: not a head directory, or a multi-label head (:class:`OneVsRestHead`).
        """
        head, weights = _read(directory)
        if head.get("kind", SINGLE_LABEL_KIND) != SINGLE_LABEL_KIND:
            raise AdaptError(f"{directory} holds a {head.get('kind')} (multi-label), not a single-label adaptive head")
        meta = {k: v for k, v in head.items() if k not in ("kind", "format_version", "labels", "temperature",
                                                           "encoder", "revision", "agent")}
        return cls(head["labels"], weights["coef"], weights["intercept"], head.get("temperature", 1.0),
                   head.get("encoder"), head.get("revision", ""), meta)


def _read(directory: str | Path) -> tuple[dict, dict]:
    """``(head.json, weights)`` of a head directory.

    Raises:
        AdaptError: either file is missing.
    """
    directory = Path(directory)
    try:
        head = json.loads((directory / HEAD_FILE).read_text(encoding="utf-8"))
        with np.load(directory / WEIGHTS_FILE) as npz:
            weights = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise AdaptError(f"{directory} is not a head directory ({HEAD_FILE} and {WEIGHTS_FILE} expected)") from None
    return head, weights


def logit(p) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities clipped to [1e-7, 1 - 1e-7] (float64)."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(q) - np.log1p(-q)


def decide(scores: np.ndarray, thresholds, at_least_one: bool = True) -> np.ndarray:
    """Multi-label decisions ``(n, K)`` bool: ``scores >= thresholds`` per label; with ``at_least_one`` a row where
    no label passes gets the label closest to its threshold (the largest ``logit(score) - logit(threshold)``; with
    one threshold for every label that is the top score), the convention of
    :func:`annotate.dataset.suggestion_value` (a suggestion is never empty).

    Args:
        scores: ``(n, K)`` independent probabilities.
        thresholds: a scalar or ``(K,)``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), scores.shape[-1:])
    chosen = scores >= t
    if at_least_one and scores.size:
        empty = ~chosen.any(axis=1)
        if empty.any():
            best = (logit(scores[empty]) - logit(t)).argmax(axis=1)
            chosen[np.flatnonzero(empty), best] = True
    return chosen


class OneVsRestHead:
    """One-vs-rest binary logistic regressions on sentence embeddings: a multi-label head.

    ``predict_proba(X)`` = ``sigmoid(X @ coef.T + intercept)``, one independent probability per label (rows do not
    sum to 1); ``decisions(X)`` = :func:`decide` with the per-label ``thresholds`` (fitted by
    ``annotate.multilabel`` on out-of-fold predictions of the reviews, 0.5 until a label has enough of them).

    Attributes:
        labels: class names, column order. coef: ``(K, d)``; intercept: ``(K,)``; thresholds: ``(K,)`` in (0, 1).
        encoder: ``{"model_id", "fingerprint", "dim"}`` of the sentence encoder whose embeddings it reads.
        revision: content hash of what it was trained on. meta: training facts, including ``sources`` (per label:
            what the column is, e.g. ``"reviews+pseudo-labels"`` or ``"zero-shot"`` when the zero-shot scores were
            kept for that label and the column is their least-squares image in the embeddings).
    """

    multi_label = True

    def __init__(self, labels, coef: np.ndarray, intercept: np.ndarray, thresholds=None, encoder: dict | None = None,
                 revision: str = "", meta: dict | None = None) -> None:
        self.labels = list(labels)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        k = len(self.labels)
        self.thresholds = np.full(k, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        if self.coef.ndim != 2 or self.coef.shape[0] != k or self.intercept.shape != (k,) or self.thresholds.shape != (k,):
            raise AdaptError(f"a one-vs-rest head of {k} labels needs coef (K, d), intercept (K,) and thresholds (K,); "
                             f"got {self.coef.shape}, {self.intercept.shape}, {self.thresholds.shape}")
        if not ((self.thresholds > 0) & (self.thresholds < 1)).all():
            raise AdaptError(f"thresholds must lie in (0, 1); got {self.thresholds.tolist()}")
        self.encoder = dict(encoder or {})
        self.revision = revision
        self.meta = dict(meta or {})

    @property
    def agent(self) -> str:
        """The suggestion agent Argilla shows: ``ovr-head:<revision>``."""
        return f"ovr-head:{self.revision[:12]}"

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """``(n, K)`` logits of ``(n, d)`` embeddings.

        Raises:
            AdaptError: ``d`` differs from the head's.
        """
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.coef.shape[1]:
            raise AdaptError(f"embeddings of shape {x.shape} do not fit a head of dimension {self.coef.shape[1]}")
        return x @ self.coef.T + self.intercept

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """``(n, K)`` independent per-label probabilities (sigmoid)."""
        return sigmoid(self.logits(embeddings))

    def decisions(self, embeddings: np.ndarray, at_least_one: bool = True) -> np.ndarray:
        """``(n, K)`` bool: the labels the head assigns (:func:`decide` with :attr:`thresholds`)."""
        return decide(self.predict_proba(embeddings), self.thresholds, at_least_one)

    def save(self, directory: str | Path) -> Path:
        """Write ``head.json`` and ``weights.npz`` (``coef``, ``intercept``, ``thresholds``) into ``directory``
        atomically (:func:`service.atomic.atomic_directory`), as :meth:`AdaptiveHead.save` does.

        Raises:
            AdaptError: ``directory`` is a file, or a non-empty folder that holds no head (nothing is written).
        """
        directory = Path(directory)
        try:
            check_target(directory, is_head_dir)
        except FileExistsError as exc:
            raise AdaptError(f"cannot save the head: {exc}") from None
        head = {"kind": MULTI_LABEL_KIND, "format_version": 1, "multi_label": True, "labels": self.labels,
                "thresholds": [float(t) for t in self.thresholds], "encoder": self.encoder,
                "revision": self.revision, "agent": self.agent, **self.meta}
        with atomic_directory(directory, replaceable=is_head_dir) as staging:
            np.savez(staging / WEIGHTS_FILE, coef=self.coef.astype(np.float32),
                     intercept=self.intercept.astype(np.float32), thresholds=self.thresholds.astype(np.float64))
            (staging / HEAD_FILE).write_text(json.dumps(head, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "OneVsRestHead":
        """Read a directory written by :meth:`save`.

        Raises:
            AdaptError: not a head directory, or a single-label head.
        """
        head, weights = _read(directory)
        if head.get("kind") != MULTI_LABEL_KIND:
            raise AdaptError(f"{directory} holds a {head.get('kind', SINGLE_LABEL_KIND)}, not a one-vs-rest head")
        meta = {k: v for k, v in head.items() if k not in ("kind", "format_version", "multi_label", "labels",
                                                           "thresholds", "encoder", "revision", "agent")}
        return cls(head["labels"], weights["coef"], weights["intercept"], weights.get("thresholds", head["thresholds"]),
                   head.get("encoder"), head.get("revision", ""), meta)


def load_head(directory: str | Path) -> AdaptiveHead | OneVsRestHead:
    """The head in ``directory``, of whichever kind its ``head.json`` names.

    Raises:
        AdaptError: not a head directory, or an unknown kind.
    """
    kind = _read(directory)[0].get("kind", SINGLE_LABEL_KIND)
    if kind == SINGLE_LABEL_KIND:
        return AdaptiveHead.load(directory)
    if kind == MULTI_LABEL_KIND:
        return OneVsRestHead.load(directory)
    raise AdaptError(f"{directory}: unknown head kind {kind!r} (this service reads {SINGLE_LABEL_KIND} and "
                     f"{MULTI_LABEL_KIND})")


def is_head_dir(directory: str | Path) -> bool:
    """Whether ``directory`` holds a head of either kind (``head.json``)."""
    return (Path(directory) / HEAD_FILE).is_file()
