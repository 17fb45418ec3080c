"""The zero-shot core: (premise, hypothesis) pairs, engine batches, and scores from entailment logits.

Semantics follow Hugging Face's ``ZeroShotClassificationPipeline`` (transformers 4.x,
``pipelines/zero_shot_classification.py``) so that the service returns the same numbers as
``pipeline("zero-shot-classification")`` on the same checkpoint:

- each text is the premise; each candidate label fills the hypothesis template;
- pairs are tokenized with premise-only truncation (``truncation="only_first"``);
- single-label: softmax of the entailment logits across the candidate labels of a text;
- multi-label (or a single candidate label, which the pipeline also treats as multi-label):
  per label, softmax over (contradiction, entailment) logits, keeping the entailment probability;
- labels are returned sorted by descending score.

The entailment index is read from ``config.label2id`` (the first label starting with "entail",
case-insensitive), as the pipeline does. The pipeline takes the contradiction index to be 0, or -1
when entailment is 0; this module reads a label starting with "contra" from ``label2id`` and only
falls back to the pipeline's rule when there is none (the two agree for every standard MNLI head).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

PLACEHOLDER = "{}"


class InputError(ValueError):
    """Input the model cannot take as given (the service answers 422 with the message)."""


class TemplateError(InputError):
    """A hypothesis template without exactly one ``{}`` placeholder."""


def validate_template(template: str) -> str:
    """Return ``template`` if it holds exactly one ``{}``; raise :class:`TemplateError` otherwise."""
    count = template.count(PLACEHOLDER)
    if count != 1:
        raise TemplateError(
            f"hypothesis_template must contain exactly one '{{}}' where the label goes, found {count} "
            f"in {template!r}; e.g. 'This text is about {{}}.'"
        )
    return template


def fill_template(template: str, label: str) -> str:
    """Put ``label`` into the template's ``{}`` by plain substitution.

    Never ``str.format``: a user template such as ``{0.__class__}`` must not reach Python's
    formatter. Other braces in the template are kept literally.
    """
    head, tail = validate_template(template).split(PLACEHOLDER)
    return head + label + tail


def entailment_index(label2id: dict[str, int]) -> int:
    """Class index of entailment: the first ``label2id`` key starting with "entail" (any case).

    Raises:
        ValueError: no such label; the model is not an NLI model (or its config lacks label names).
    """
    for label, index in label2id.items():
        if label.lower().startswith("entail"):
            return int(index)
    raise ValueError(
        f"the model's config.label2id {label2id} has no entailment label; zero-shot classification needs "
        "an NLI model whose label2id names 'entailment' (and 'contradiction')"
    )


def contradiction_index(label2id: dict[str, int], entailment_id: int) -> int:
    """Class index of contradiction from ``label2id``; else the pipeline's rule (0, or -1 if entailment is 0)."""
    for label, index in label2id.items():
        if label.lower().startswith("contra"):
            return int(index)
    return -1 if entailment_id == 0 else 0


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64 (float64 keeps 1e-4 agreement for large logits)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def scores_from_logits(logits: np.ndarray, *, entailment_id: int, contradiction_id: int, multi_label: bool) -> np.ndarray:
    """Zero-shot scores from NLI logits.

    Args:
        logits: ``(n_texts, n_labels, n_classes)`` NLI logits for every (text, label) pair.
        multi_label: score each label independently (entailment vs contradiction) instead of a
            softmax across labels. Forced on when there is a single label, as in the pipeline.

    Returns:
        ``(n_texts, n_labels)`` probabilities in [0, 1]; rows sum to 1 unless multi-label.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be (n_texts, n_labels, n_classes), got shape {logits.shape}")
    if multi_label or logits.shape[1] == 1:
        pair = logits[..., [contradiction_id, entailment_id]]
        return softmax(pair, axis=-1)[..., 1]
    return softmax(logits[..., entailment_id], axis=-1)


class Engine(Protocol):
    """What the core needs from an engine (see :mod:`service.engines`)."""

    input_names: tuple[str, ...]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class ZeroShotResult:
    """One text's result: its labels sorted by descending score, and those scores."""

    text: str
    labels: list[str]
    scores: list[float]


class ZeroShotClassifier:
    """NLI zero-shot classification over any engine.

    Args:
        tokenizer: a Hugging Face fast tokenizer of the model.
        engine: callable mapping a dict of ``(batch, seq_len)`` int64 arrays to ``(batch, n_classes)``
            float logits.
        label2id: the model's ``config.label2id``.
        max_length: max tokens per pair; longer pairs lose premise tokens (never hypothesis tokens).
        batch_size: pairs per engine call. Pairs are sorted by length first, so each batch is
            padded only to its own longest pair (dynamic padding).
    """

    def __init__(self, tokenizer, engine: Engine, label2id: dict[str, int], *, max_length: int, batch_size: int = 32):
        self.tokenizer = tokenizer
        self.engine = engine
        self.entailment_id = entailment_index(label2id)
        self.contradiction_id = contradiction_index(label2id, self.entailment_id)
        self.max_length = max_length
        self.batch_size = batch_size

    def logits(self, premises: list[str], hypotheses: list[str]) -> np.ndarray:
        """NLI logits for aligned pairs: ``(len(premises), n_classes)`` float32.

        Raises:
            ValueError: ``premises`` and ``hypotheses`` differ in length.
            InputError: a hypothesis alone does not fit in ``max_length`` tokens.
        """
        if len(premises) != len(hypotheses):
            raise ValueError(f"{len(premises)} premises but {len(hypotheses)} hypotheses")
        try:
            encoded = self.tokenizer(premises, hypotheses, truncation="only_first", max_length=self.max_length,
                                     padding=False, return_attention_mask=False, return_token_type_ids=True)
        except Exception as exc:  # the Rust tokenizer raises a bare Exception
            if "Truncation error" not in str(exc):
                raise
            longest = max(hypotheses, key=lambda h: len(self.tokenizer.tokenize(h)))
            raise InputError(
                f"the hypothesis {longest!r} leaves no room for the text within the model's max length of "
                f"{self.max_length} tokens: shorten the label or the template") from None
        ids, types = encoded["input_ids"], encoded.get("token_type_ids")
        order = np.argsort([len(x) for x in ids], kind="stable")
        out: np.ndarray | None = None
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = np.full((len(idx), width), self.tokenizer.pad_token_id or 0, dtype=np.int64)
            attention = np.zeros((len(idx), width), dtype=np.int64)
            token_types = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = len(ids[i])
                input_ids[row, :n] = ids[i]
                attention[row, :n] = 1
                if types is not None:
                    token_types[row, :n] = types[i]
            batch = {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": token_types}
            logits = self.engine({k: v for k, v in batch.items() if k in self.engine.input_names})
            if out is None:
                out = np.empty((len(premises), logits.shape[-1]), dtype=np.float32)
            out[idx] = logits
        return out if out is not None else np.empty((0, 0), dtype=np.float32)

    def scores(self, texts: list[str], labels: list[str], *, hypothesis_template: str, multi_label: bool) -> np.ndarray:
        """``(len(texts), len(labels))`` zero-shot scores, in input order (see :func:`scores_from_logits`)."""
        hypotheses = [fill_template(hypothesis_template, label) for label in labels]
        premises = [text for text in texts for _ in labels]
        logits = self.logits(premises, hypotheses * len(texts))
        logits = logits.reshape(len(texts), len(labels), -1)
        return scores_from_logits(logits, entailment_id=self.entailment_id,
                                  contradiction_id=self.contradiction_id, multi_label=multi_label)

    def __call__(self, texts: list[str], labels: list[str], *, hypothesis_template: str,
                 multi_label: bool = False) -> list[ZeroShotResult]:
        """Classify ``texts`` against candidate ``labels``; one :class:`ZeroShotResult` per text, in order."""
        scores = self.scores(texts, labels, hypothesis_template=hypothesis_template, multi_label=multi_label)
        results = []
        for text, row in zip(texts, scores):
            top = list(reversed(row.argsort()))  # the pipeline's ordering, ties included
            results.append(ZeroShotResult(text, [labels[i] for i in top], [float(row[i]) for i in top]))
        return results
