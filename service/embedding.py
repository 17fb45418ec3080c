"""The ``embedding`` zero-shot method: N + K encoder passes instead of N x K.

Each text is embedded once by a sentence encoder (all-MiniLM-L6-v2 by default), each candidate
label's hypothesis (the label in the hypothesis template) is embedded once and kept in a bounded LRU
cache, and a (text, label) pair scores by the cosine similarity of the two unit vectors. This is the
bi-encoder baseline of Yin et al. (2019, "Benchmarking Zero-shot Text Classification") and of
sentence-transformers' label-similarity recipe; it costs one pass per new text whatever the number of
labels. Similarities become probabilities with the method's :class:`~service.calibration.Calibration`:
``softmax(cos / T)`` across labels, or ``sigmoid(scale * cos + bias)`` per label for multi-label.

It has no notion of "none of these labels": a text always sits nearest some label. Use the ``nli``
method where entailment semantics matter (multi-label, abstention).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from cachetools import LRUCache

from service.batching import SequenceRunner
from service.calibration import IDENTITY, Calibration, sigmoid, softmax
from service.long_text import cut_to_budget, special_tokens
from service.pooling import PoolingConfig, pool_numpy
from service.zeroshot import Descriptions, Engine, ZeroShotMethod, ZeroShotResult, label_hypotheses, merge_hypotheses

#: Per-thread sink for the text embeddings :meth:`EmbeddingClassifier.raw` computes (see :func:`scores_and_embeddings`).
_capture = threading.local()


class SentenceEncoder:
    """Texts -> unit-length sentence embeddings through any engine.

    Args:
        tokenizer: the encoder's Hugging Face fast tokenizer.
        engine: maps ``(batch, seq_len)`` int64 token arrays to pooled embeddings ``(batch, hidden)``
            (graphs exported by this project pool inside the graph) or to token states
            ``(batch, seq_len, hidden)`` (shipped graphs; pooled here with ``pooling``).
        max_length: tokens per text; longer texts are truncated (as sentence-transformers does at
            its ``max_seq_length``).
        batch_size: texts per engine call, length-sorted (dynamic padding).
        pooling: how token states are pooled when the engine returns them.
    """

    def __init__(self, tokenizer, engine: Engine, *, max_length: int, batch_size: int = 32,
                 pooling: PoolingConfig = PoolingConfig()):
        self.tokenizer = tokenizer
        self.engine = engine
        self.max_length = max_length
        self.batch_size = batch_size
        self.pooling = pooling
        #: Runs tokenized texts (the service swaps in a :class:`~service.batching.MicroBatcher`).
        self.runner: SequenceRunner = SequenceRunner(engine, batch_size=batch_size,
                                                     pad_id=tokenizer.pad_token_id or 0, postprocess=self._pool)

    def _pool(self, output: np.ndarray, batch: dict[str, np.ndarray]) -> np.ndarray:
        if output.ndim == 3:
            return pool_numpy(output, batch["attention_mask"], self.pooling)
        norms = np.linalg.norm(output, axis=1, keepdims=True)
        return output / np.clip(norms, 1e-12, None)  # no-op for graphs that normalise; unit length for others

    def encode(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), hidden)`` float32 embeddings of unit L2 norm, in input order."""
        if not texts:
            return np.empty((0, 0), dtype=np.float32)
        started = time.perf_counter()
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False,
                                 return_attention_mask=False, return_token_type_ids=True)
        self.runner.tokenized(time.perf_counter() - started)
        return self.runner(encoded["input_ids"], encoded.get("token_type_ids"))


class EmbeddingClassifier(ZeroShotMethod):
    """Zero-shot classification by text-hypothesis cosine similarity (the ``embedding`` method).

    Args:
        encoder: the sentence encoder.
        calibration: fitted temperature (single-label) and Platt numbers (multi-label); the identity
            gives ``softmax(cos)``, which is nearly uniform - fit one with ``python -m train.calibrate``.
        cache_size: most hypothesis embeddings kept (LRU). Keys are the filled hypotheses, so the
            cache is per (model, template, label): one classifier serves one model.
    """

    name = "embedding"

    def __init__(self, encoder: SentenceEncoder, *, calibration: Calibration = IDENTITY, cache_size: int = 4096):
        self.encoder = encoder
        self.calibration = calibration
        self.cache: LRUCache = LRUCache(maxsize=cache_size)
        self._cache_lock = threading.Lock()
        self.cache_hits = self.cache_misses = 0

    def hypothesis_embeddings(self, hypotheses: list[str]) -> np.ndarray:
        """``(len(hypotheses), hidden)`` embeddings, from the cache where present; misses are encoded in one call."""
        with self._cache_lock:
            found = {h: self.cache.get(h) for h in hypotheses}
        missing = [h for h, e in found.items() if e is None]
        self.cache_hits += len(found) - len(missing)
        self.cache_misses += len(missing)
        if missing:
            fresh = self.encoder.encode(missing)
            with self._cache_lock:
                for h, e in zip(missing, fresh):
                    self.cache[h] = e
                    found[h] = e
        return np.stack([found[h] for h in hypotheses])

    def raw(self, texts: list[str], labels: list[str], *, hypothesis_template: str,
            label_descriptions: Descriptions | None = None) -> np.ndarray:
        """Cosine similarities ``(len(texts), len(labels))`` float64, in [-1, 1]; a label with descriptions gets the
        mean cosine of its hypotheses (:func:`service.zeroshot.label_hypotheses`)."""
        groups = label_hypotheses(labels, hypothesis_template, label_descriptions)
        hypotheses = [h for group in groups for h in group]
        label_vectors = self.hypothesis_embeddings(hypotheses)
        text_vectors = self.encoder.encode(texts)
        sink = getattr(_capture, "sink", None)
        if sink is not None and sink[0] is self.encoder:  # scores_and_embeddings() wants these vectors too
            sink[1].append(text_vectors)
        return merge_hypotheses(text_vectors.astype(np.float64) @ label_vectors.astype(np.float64).T,
                                [len(g) for g in groups])

    def sequences(self, n_texts: int, n_labels: int) -> int:
        """One pass per text (the labels' embeddings are cached)."""
        return n_texts

    def window(self, labels: list[str], *, hypothesis_template: str,
               label_descriptions: Descriptions | None = None) -> tuple[Any, int]:
        """The encoder's max sequence length less its special tokens (labels do not share the text's window)."""
        tokenizer = self.encoder.tokenizer
        return tokenizer, self.encoder.max_length - special_tokens(tokenizer, pair=False)

    def probabilities(self, raw: np.ndarray, *, multi_label: bool) -> np.ndarray:
        """``softmax(cos / T)`` across labels, or ``sigmoid(scale * cos + bias)`` per label (multi-label)."""
        if multi_label:
            return sigmoid(self.calibration.binary_scale * raw + self.calibration.binary_bias)
        return softmax(raw / self.calibration.temperature, axis=-1)

    def cache_info(self) -> dict:
        """Hypothesis-cache size and hit counts, for ``GET /info``."""
        return {"size": len(self.cache), "max_size": int(self.cache.maxsize), "hits": self.cache_hits,
                "misses": self.cache_misses}


def embed_texts(encoder: SentenceEncoder, texts: list[str]) -> np.ndarray:
    """Unit-length embeddings ``(len(texts), hidden)`` float32 of the texts as ``POST /embed`` computes them: each text
    cut a little past the encoder's window (:func:`service.long_text.cut_to_budget`; the tokenizer then reads the same
    tokens as from the whole text), then encoded."""
    cut, _ = cut_to_budget(encoder.tokenizer, texts, encoder.max_length - special_tokens(encoder.tokenizer, pair=False))
    return encoder.encode(cut)


def scores_and_embeddings(method: ZeroShotMethod, encoder: SentenceEncoder, texts: list[str], labels: list[str], *,
                          hypothesis_template: str, multi_label: bool = False, long_text: str = "truncate",
                          max_windows: int = 64, max_sequences: int | None = None,
                          label_descriptions: Descriptions | None = None
                          ) -> tuple[list[ZeroShotResult], np.ndarray, bool]:
    """Zero-shot results and sentence embeddings of ``texts`` from one encoder pass where the method allows it.

    The ``embedding`` method's scores are a function of the text embeddings (cosine to the label embeddings,
    calibrated), and the ``ensemble`` computes the same embeddings next to its NLI pairs: with ``long_text="truncate"``
    the vectors the method computed while scoring (for exactly the text :func:`embed_texts` reads: the method cuts each
    text at the encoder's window, or past it for the ensemble's wider NLI window, and the encoder truncates the rest)
    are returned, so each text goes through the encoder once. For the ``nli`` method (a cross-encoder: the sentence
    encoder is another model) and for ``long_text="chunks"`` (the method embeds windows, not the text), the embeddings
    are one more encoder pass (:func:`embed_texts`) after the scores.

    Args:
        method: the zero-shot method (its ``__call__`` arguments follow).
        encoder: the sentence encoder whose embeddings are wanted (the embedding method's own, for sharing).

    Returns:
        ``(results, embeddings, shared)``: one :class:`~service.zeroshot.ZeroShotResult` per text, embeddings
        ``(len(texts), hidden)`` float32 of unit length (equal, within float rounding of batch padding, to
        :func:`embed_texts`), and whether they came from the scoring pass.

    Raises:
        the method's errors (:class:`service.zeroshot.InputError`, ``ValueError``).
    """
    sink: tuple[SentenceEncoder, list[np.ndarray]] = (encoder, [])
    previous = getattr(_capture, "sink", None)
    _capture.sink = sink
    try:
        results = method(texts, labels, hypothesis_template=hypothesis_template, multi_label=multi_label,
                         long_text=long_text, max_windows=max_windows, max_sequences=max_sequences,
                         **({"label_descriptions": label_descriptions} if label_descriptions else {}))
    finally:
        _capture.sink = previous
    captured = sink[1]
    if long_text == "truncate" and len(captured) == 1 and len(captured[0]) == len(texts):
        return results, captured[0], True
    return results, embed_texts(encoder, texts), False
