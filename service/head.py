"""The adapted head's file format and scoring: what the server serves, whoever fitted it.

A head is a multinomial logistic regression on frozen sentence embeddings with a temperature, saved as a
directory of two files (``head.json``: labels, temperature, encoder, revision, training meta; ``weights.npz``:
``coef`` and ``intercept``). ``annotate.adaptive`` fits heads; ``service.classify`` serves them
(``python -m service --classifier NAME=DIR``); ``train.head_teacher`` reads them as a student's teacher. This
module is the one place that reads and writes the format, so the server never imports the annotation loop.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from service.atomic import atomic_directory, check_target
from service.calibration import softmax

HEAD_FILE = "head.json"
WEIGHTS_FILE = "weights.npz"


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
        head = {"kind": "adaptive-head", "format_version": 1, "labels": self.labels, "temperature": self.temperature,
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
            AdaptError: not a head directory.
        """
        directory = Path(directory)
        try:
            head = json.loads((directory / HEAD_FILE).read_text(encoding="utf-8"))
            weights = np.load(directory / WEIGHTS_FILE)
        except FileNotFoundError:
            raise AdaptError(f"{directory} is not a head directory ({HEAD_FILE} and {WEIGHTS_FILE} expected)") from None
        meta = {k: v for k, v in head.items() if k not in ("kind", "format_version", "labels", "temperature",
                                                           "encoder", "revision", "agent")}
        return cls(head["labels"], weights["coef"], weights["intercept"], head.get("temperature", 1.0),
                   head.get("encoder"), head.get("revision", ""), meta)


def is_head_dir(directory: str | Path) -> bool:
    """Whether ``directory`` holds an :class:`AdaptiveHead` (``head.json``)."""
    return (Path(directory) / HEAD_FILE).is_file()
