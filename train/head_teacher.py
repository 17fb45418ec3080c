"""An adapted head as the soft-label teacher of a student: one sentence-encoder pass a text, no N x K pairs.

The head is a directory written by ``python -m annotate adapt`` or ``annotate refresh``/``push``
(:class:`service.head.AdaptiveHead`): a logistic regression on the embeddings of one sentence encoder (its
``encoder.fingerprint``). :class:`HeadTeacher` embeds texts with that encoder (:mod:`pool.scorers`: a running
service's ``POST /embed``, or in-process) and returns ``head.predict_proba``. Texts whose embeddings are already
stored in scored pools (:class:`pool.store.PoolStore`, e.g. the cache of ``adapt``/``simulate``) are not
embedded again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


class HeadTeacherError(ValueError):
    """The head cannot teach this student: not a head directory, other labels, or another encoder."""


class HeadTeacher:
    """Scores texts with a saved adapted head on its own sentence encoder.

    Args:
        directory: the head directory (``head.json``, ``weights.npz``).
        url: a running zero-shot service whose ``POST /embed`` serves the head's encoder; ``None``: in-process.
        model, engine: in-process encoder settings (as ``annotate``'s ``--model``/``--engine``).
        embedding_stores: scored-pool folders whose stored embeddings are reused for the texts they hold
            (checked to come from the head's encoder).

    Attributes:
        seconds: time spent embedding and scoring (stored embeddings cost only the head's matrix product).
        encoder_passes: texts embedded by the encoder; cached_texts: texts served from ``embedding_stores``.

    Raises:
        HeadTeacherError: not a head directory, or a store made by another encoder.
    """

    def __init__(self, directory: str | Path, *, url: str | None = None, model: str = "default",
                 engine: str = "onnxruntime", embedding_stores: Sequence[str | Path] = ()) -> None:
        from service.head import AdaptError, AdaptiveHead

        try:
            self.head = AdaptiveHead.load(directory)
        except AdaptError as exc:
            raise HeadTeacherError(str(exc)) from None
        self.directory = Path(directory)
        self.url, self.model, self.engine = url, model, engine
        self.fingerprint = (self.head.encoder or {}).get("fingerprint")
        self.seconds = 0.0
        self.encoder_passes = 0
        self.cached_texts = 0
        self._scorer = None
        self._cache: dict[str, np.ndarray] = {}
        for store_dir in embedding_stores:
            self._add_store(store_dir)

    @property
    def labels(self) -> list[str]:
        return list(self.head.labels)

    @property
    def agent(self) -> str:
        return f"{self.head.agent}@{(self.head.encoder or {}).get('model_id', '?')}"

    def _add_store(self, store_dir) -> None:
        from pool.store import PoolStore, StoreError

        store = PoolStore(store_dir)
        try:
            pool = store.load()
        except StoreError as exc:
            raise HeadTeacherError(f"--teacher-embeddings: {exc}") from None
        stored = (pool.meta.get("encoder") or {}).get("fingerprint")
        if self.fingerprint and stored != self.fingerprint:
            raise HeadTeacherError(f"the embeddings in {store_dir} come from encoder {stored}, but the head was fitted "
                                   f"on {self.fingerprint}")
        if pool.embeddings.shape[1] != self.head.coef.shape[1]:
            raise HeadTeacherError(f"the embeddings in {store_dir} have dimension {pool.embeddings.shape[1]}, the head "
                                   f"{self.head.coef.shape[1]}")
        for text, vector in zip(pool.texts, pool.embeddings):
            self._cache.setdefault(text, vector)

    def _encoder(self):
        from pool.scorers import HttpScorer, LocalScorer

        if self._scorer is None:
            template = self.head.meta.get("hypothesis_template", "This text is about {}.")
            self._scorer = (HttpScorer(self.url, self.labels, template, method="embedding") if self.url else
                            LocalScorer(self.labels, template, model=self.model, engine=self.engine,
                                        method="embedding", batch_size=128))
        return self._scorer

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, d)`` float32 embeddings: stored ones where a store holds the text, else one encoder pass each.

        Raises:
            HeadTeacherError: the encoder that ran is not the head's (fingerprints differ).
            pool.scorers.ScoringError: the encoder failed.
        """
        texts = list(texts)
        began = time.perf_counter()
        out = np.zeros((len(texts), self.head.coef.shape[1]), dtype=np.float32)
        missing = [i for i, t in enumerate(texts) if t not in self._cache]
        for i, text in enumerate(texts):
            if text in self._cache:
                out[i] = self._cache[text]
        self.cached_texts += len(texts) - len(missing)
        if missing:
            scorer = self._encoder()
            vectors = scorer.embed([texts[i] for i in missing])
            served = (scorer.encoder or {}).get("fingerprint")
            if self.fingerprint and served and served != self.fingerprint:
                raise HeadTeacherError(f"the head in {self.directory} was fitted on encoder {self.fingerprint}, but the "
                                       f"encoder that ran is {served}: use the service/model that fitted it")
            out[missing] = vectors
            self.encoder_passes += len(missing)
        self.seconds += time.perf_counter() - began
        return out

    def scores(self, texts: Sequence[str], labels: Sequence[str] | None = None) -> np.ndarray:
        """``(n, K)`` head probabilities, columns in ``labels`` order (default the head's).

        Raises:
            HeadTeacherError: ``labels`` is not the head's label set.
        """
        order = self.label_order(labels)
        embeddings = self.embed(texts)
        began = time.perf_counter()
        probabilities = self.head.predict_proba(embeddings)[:, order]
        self.seconds += time.perf_counter() - began
        return probabilities

    def label_order(self, labels: Sequence[str] | None) -> list[int]:
        """Column indices of the head's scores in ``labels`` order.

        Raises:
            HeadTeacherError: the label sets differ.
        """
        if labels is None:
            return list(range(len(self.labels)))
        if sorted(labels) != sorted(self.labels):
            raise HeadTeacherError(f"the head in {self.directory} knows labels {self.labels}, the training data "
                                   f"{list(labels)}")
        return [self.labels.index(label) for label in labels]

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None
