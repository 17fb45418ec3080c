"""Serving fine-tuned classifiers (the students of ``train/finetune.py``): texts -> label distribution.

A student has a fixed label set, so one forward pass per text replaces the zero-shot teacher's N x K pairs. It
runs through the same engine layer as the teacher (:func:`service.engines.create_engine`: DeepSparse or ONNX
Runtime, its int8 graph when the directory holds ``quantization.json``) and the same micro-batching. Scores are
a softmax over the labels, or a per-label sigmoid when the model's ``config.json`` says
``"problem_type": "multi_label_classification"``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.batching import MicroBatcher, SequenceRunner, engine_token_cap
from service.calibration import sigmoid, softmax
from service.long_text import cut_to_budget, special_tokens
from service.zeroshot import ZeroShotResult, rank


@dataclass
class TextClassifier:
    """A loaded classifier: tokenizer, engine, labels.

    Attributes:
        name: the name requests use (``model`` field of ``POST /classify``).
        labels: class names, index = output column.
        multi_label: sigmoid per label instead of a softmax.
    """

    name: str
    tokenizer: object
    engine: object
    labels: list[str]
    multi_label: bool
    max_length: int
    runner: SequenceRunner
    info: dict = field(default_factory=dict)

    def logits(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), K)`` float32 logits, in input order."""
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False,
                                 return_attention_mask=False, return_token_type_ids=True)
        return self.runner(encoded["input_ids"], encoded.get("token_type_ids"))

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), K)`` probabilities: rows sum to 1 unless multi-label."""
        logits = np.asarray(self.logits(texts), dtype=np.float64)
        return sigmoid(logits) if self.multi_label else softmax(logits, axis=-1)

    def __call__(self, texts: list[str]) -> list[ZeroShotResult]:
        """One result per text, labels sorted by descending probability (``truncated``: longer than ``max_length``)."""
        cut, truncated = cut_to_budget(self.tokenizer, texts, self.max_length - special_tokens(self.tokenizer, pair=False))
        return rank(texts, self.labels, self.probabilities(cut), truncated)

    def close(self) -> None:
        self.runner.close()
        self.engine.close()


def load_classifier(name: str, model_id: str, *, engine: str = "auto", quantization: str = "auto", cache_dir: Path,
                    batch_size: int = 32, num_threads: int | None = None, batch_wait_ms: float = 0.0,
                    max_queue: int = 16384, max_length: int | None = None,
                    max_batch_tokens: int | None = None) -> TextClassifier:
    """Load a classifier directory (a student's output directory, or any HF sequence classifier).

    Raises:
        service.sources.ModelSourceError: the directory cannot be resolved.
        service.engines.EngineError: no engine can run it.
        ValueError: ``config.json`` has no ``id2label``.
    """
    from transformers import AutoTokenizer

    from service.engines import create_engine
    from service.sources import resolve_model

    started = time.perf_counter()
    source = resolve_model(model_id, cache_dir=cache_dir)
    config = json.loads((source.path / "config.json").read_text(encoding="utf-8"))
    if not config.get("id2label"):
        raise ValueError(f"{source.path}/config.json has no id2label: not a classifier")
    labels = [config["id2label"][str(i)] if str(i) in config["id2label"] else config["id2label"][i]
              for i in range(len(config["id2label"]))]
    tokenizer = AutoTokenizer.from_pretrained(source.path, use_fast=True)
    length = max_length or min(tokenizer.model_max_length, config.get("max_position_embeddings", 512))
    built = create_engine(engine, source, cache_dir=cache_dir, batch_size=batch_size, max_length=length,
                          num_threads=num_threads, quantization=quantization)
    pad = tokenizer.pad_token_id or 0
    max_batch_tokens = engine_token_cap(max_batch_tokens, built.name)
    runner = (MicroBatcher(built, batch_size=batch_size, pad_id=pad, max_wait_ms=batch_wait_ms, max_queue=max_queue,
                           name=f"micro-batcher-{name}", max_batch_tokens=max_batch_tokens) if batch_wait_ms > 0
              else SequenceRunner(built, batch_size=batch_size, pad_id=pad, max_batch_tokens=max_batch_tokens))
    from service.onnx_export import inspect_onnx

    facts = inspect_onnx(built.onnx_path) if getattr(built, "onnx_path", None) else {}
    multi = config.get("problem_type") == "multi_label_classification"
    info = {"model_id": model_id, "model_path": str(source.path), "labels": labels, "multi_label": multi,
            "max_length": length, **facts, **built.describe(), "load_seconds": round(time.perf_counter() - started, 3)}
    onnx_path = getattr(built, "onnx_path", None)
    if onnx_path and Path(onnx_path).is_file():
        info["size_mb"] = round(Path(onnx_path).stat().st_size / 1e6, 2)  # the graph this engine runs
    classifier = TextClassifier(name, tokenizer, built, labels, multi, length, runner, info)
    info["texts_per_s"] = _measure_rate(classifier)
    return classifier


def _measure_rate(classifier: TextClassifier, n: int = 64) -> float:
    """Texts/s of ``classifier`` on ``n`` synthetic 24-word texts, tokenization included (one warm-up call first);
    a load-time estimate for ``/info``, not a benchmark."""
    text = " ".join(["the quarterly report shows that the company expects strong growth in its new markets"] * 2)
    texts = [f"{i} {text}" for i in range(n)]
    classifier.probabilities(texts[:8])
    began = time.perf_counter()
    classifier.probabilities(texts)
    return round(n / max(time.perf_counter() - began, 1e-9), 1)


class HeadClassifier:
    """An adapted head (saved by ``annotate push``/``refresh``) on the service's own sentence encoder: one encoder
    pass a text, then ``softmax((x @ W.T + b) / T)`` (:class:`service.head.AdaptiveHead`) or, for a multi-label
    head (:class:`service.head.OneVsRestHead`), ``sigmoid(x @ W.T + b)`` per label (``multi_label`` true; the
    head's per-label decision thresholds are in ``info``).

    It shares the embedding model's :class:`~service.embedding.SentenceEncoder` (engine and micro-batcher): no
    second copy of the encoder is loaded, and :meth:`close` leaves it to its owner.

    Attributes:
        name: the name requests use; labels: class names, index = output column; head: the head.
    """

    def __init__(self, name: str, head, encoder, info: dict) -> None:
        self.name, self.head, self.encoder, self.info = name, head, encoder, info
        self.labels = list(head.labels)
        self.multi_label = bool(getattr(head, "multi_label", False))

    @property
    def engine(self):
        return self.encoder.engine

    @property
    def runner(self):
        return self.encoder.runner

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), K)`` probabilities: rows summing to 1, or independent per label when multi-label."""
        return self.head.predict_proba(self.encoder.encode(texts))

    def __call__(self, texts: list[str]) -> list[ZeroShotResult]:
        """One result per text, labels sorted by descending probability (``truncated``: longer than the encoder's
        window, which it cuts)."""
        tokenizer = self.encoder.tokenizer  # counted on a copy: see service.long_text (thread safety)
        cut, truncated = cut_to_budget(tokenizer, texts, self.encoder.max_length - special_tokens(tokenizer, pair=False))
        return rank(texts, self.labels, self.probabilities(cut), truncated)

    def close(self) -> None:
        """Nothing to release: the encoder belongs to the embedding model."""


def load_head_classifier(name: str, directory: str | Path, embedding_model) -> HeadClassifier:
    """Serve the head saved in ``directory`` on ``embedding_model`` (a :class:`service.loader.LoadedModel` of the
    embedding role).

    Raises:
        service.head.AdaptError: not a head directory (a ``ValueError``).
        ValueError: no sentence encoder is loaded, or the head was fitted on embeddings of another encoder (its
            ``encoder.fingerprint`` differs from the loaded model's), or the dimensions differ.
    """
    from service.head import load_head

    head = load_head(directory)
    if embedding_model is None:
        raise ValueError(f"classifier {name!r}: {directory} is an adapted head, which runs on the sentence encoder; "
                         "start the service with an embedding model (not --embedding-model none)")
    loaded = embedding_model.info["fingerprint"]
    wanted = (head.encoder or {}).get("fingerprint")
    if wanted != loaded:
        raise ValueError(f"classifier {name!r}: the head in {directory} was fitted on embeddings of encoder "
                         f"{(head.encoder or {}).get('model_id')} (fingerprint {wanted}), but this service loads "
                         f"{embedding_model.source.model_id} (fingerprint {loaded}): serve it with that encoder "
                         "(--embedding-model), or refit the head on this one")
    if head.coef.shape[1] != int((head.encoder or {}).get("dim") or head.coef.shape[1]):
        raise ValueError(f"classifier {name!r}: head weights of dimension {head.coef.shape[1]} do not match its "
                         f"encoder's {head.encoder.get('dim')}")
    multi = bool(getattr(head, "multi_label", False))
    info = {"kind": "one-vs-rest-head" if multi else "adaptive-head", "model_path": str(directory),
            "labels": list(head.labels), "multi_label": multi, "revision": head.revision, "agent": head.agent,
            "encoder": head.encoder, "shares_encoder_with": "embedding",
            **({"thresholds": dict(zip(head.labels, map(float, head.thresholds)))} if multi
               else {"temperature": head.temperature}),
            **{k: v for k, v in head.meta.items() if k in ("mode", "reviewed", "pseudo_labels", "prior", "sources")}}
    return HeadClassifier(name, head, embedding_model.classifier.encoder, info)
