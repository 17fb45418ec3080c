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

A fitted :class:`~service.calibration.Calibration` (temperature for single-label, Platt scale and
bias for multi-label) may rescale those scores; without one the numbers are the pipeline's.

Every zero-shot method (this NLI one, :mod:`service.embedding`, :mod:`service.ensemble`) implements
:class:`ZeroShotMethod`: raw outputs first, probabilities from them, ranked results last.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from service.batching import SequenceRunner
from service.calibration import IDENTITY, Calibration, sigmoid, softmax
from service.long_text import LongText, aggregate, cut_to_budget, special_tokens, split_windows, token_counts

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


#: Label descriptions: ``{label: [description, ...]}`` (see :func:`label_hypotheses`).
Descriptions = Mapping[str, Sequence[str]]


def label_hypotheses(labels: Sequence[str], hypothesis_template: str, descriptions: Descriptions | None = None
                     ) -> list[list[str]]:
    """The hypotheses of each candidate label: the template filled with the label, then the label's descriptions as
    written (full sentences, e.g. ``"The reviewer enjoyed it and would recommend it."``), in order.

    Several hypotheses a label are a prompt ensemble (Radford et al. 2021, CLIP, averaged the text embeddings of
    several prompts a class; the NLI methods average the entailment logits, as in Schick and Schütze 2021's use of
    several patterns): a label's score is the mean of its hypotheses' raw scores (:func:`merge_hypotheses`).
    """
    descriptions = descriptions or {}
    return [[fill_template(hypothesis_template, label), *[str(d) for d in descriptions.get(label, ())]]
            for label in labels]


def merge_hypotheses(raw: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Mean of ``raw`` over each label's consecutive hypotheses along axis 1: ``(n, sum(sizes), ...)`` ->
    ``(n, len(sizes), ...)``; the identity when every label has one hypothesis."""
    if all(size == 1 for size in sizes):
        return raw
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return np.add.reduceat(np.asarray(raw, dtype=np.float64), starts, axis=1) / np.reshape(
        np.asarray(sizes, dtype=np.float64), (1, -1) + (1,) * (np.ndim(raw) - 2))


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


def scores_from_logits(logits: np.ndarray, *, entailment_id: int, contradiction_id: int, multi_label: bool,
                       calibration: Calibration = IDENTITY) -> np.ndarray:
    """Zero-shot scores from NLI logits.

    Args:
        logits: ``(n_texts, n_labels, n_classes)`` NLI logits for every (text, label) pair.
        multi_label: score each label independently (entailment vs contradiction) instead of a
            softmax across labels. Forced on when there is a single label, as in the pipeline.
        calibration: single-label ``softmax(entailment / T)``; multi-label
            ``sigmoid(scale * (entailment - contradiction) + bias)``. The identity (default) is the
            pipeline's softmax over (contradiction, entailment).

    Returns:
        ``(n_texts, n_labels)`` probabilities in [0, 1]; rows sum to 1 unless multi-label.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be (n_texts, n_labels, n_classes), got shape {logits.shape}")
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label or logits.shape[1] == 1:
        if calibration.is_identity:
            return softmax(logits[..., [contradiction_id, entailment_id]], axis=-1)[..., 1]
        margin = logits[..., entailment_id] - logits[..., contradiction_id]
        return sigmoid(calibration.binary_scale * margin + calibration.binary_bias)
    return softmax(logits[..., entailment_id] / calibration.temperature, axis=-1)


class Engine(Protocol):
    """What the core needs from an engine (see :mod:`service.engines`)."""

    input_names: tuple[str, ...]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class ZeroShotResult:
    """One text's result: its labels sorted by descending score, and those scores; ``truncated`` when the model
    read only part of the text (beyond its window, or beyond the windows ``long_text="chunks"`` keeps)."""

    text: str
    labels: list[str]
    scores: list[float]
    truncated: bool = False


def rank(texts: list[str], labels: list[str], scores: np.ndarray,
         truncated: list[bool] | None = None) -> list[ZeroShotResult]:
    """One :class:`ZeroShotResult` per text from ``(len(texts), len(labels))`` scores, labels by descending score."""
    results = []
    for i, (text, row) in enumerate(zip(texts, scores)):
        top = list(reversed(row.argsort()))  # the pipeline's ordering, ties included
        results.append(ZeroShotResult(text, [labels[i] for i in top], [float(row[i]) for i in top],
                                      bool(truncated[i]) if truncated is not None else False))
    return results


class ZeroShotMethod(ABC):
    """A zero-shot scoring method: texts x candidate labels -> probabilities.

    Two stages, so evaluation and calibration can reuse one forward pass: :meth:`raw` runs the
    model(s), :meth:`probabilities` applies the calibrated transform. A single candidate label is
    always scored multi-label (a softmax over one label would be 1), as in Hugging Face's pipeline.
    """

    name: ClassVar[str]
    calibration: Calibration

    @abstractmethod
    def raw(self, texts: list[str], labels: list[str], *, hypothesis_template: str,
            label_descriptions: Descriptions | None = None) -> Any:
        """The model outputs the scores derive from (method-specific arrays), one entry a label (a label with
        descriptions: the mean over its hypotheses, :func:`merge_hypotheses`)."""

    @abstractmethod
    def probabilities(self, raw: Any, *, multi_label: bool) -> np.ndarray:
        """``(n_texts, n_labels)`` probabilities from :meth:`raw`'s output."""

    def scores(self, texts: list[str], labels: list[str], *, hypothesis_template: str,
               multi_label: bool = False, label_descriptions: Descriptions | None = None) -> np.ndarray:
        """``(len(texts), len(labels))`` scores in input order; rows sum to 1 unless multi-label."""
        raw = self.raw(texts, labels, hypothesis_template=hypothesis_template, label_descriptions=label_descriptions)
        return self.probabilities(raw, multi_label=multi_label or len(labels) == 1)

    def window(self, labels: list[str], *, hypothesis_template: str,
               label_descriptions: Descriptions | None = None) -> tuple[Any, int]:
        """``(tokenizer, budget)``: most tokens of a text (special tokens excluded) the model reads next to these
        labels (and their descriptions), counted by that tokenizer (see :mod:`service.long_text`)."""
        raise NotImplementedError(f"the {self.name} method does not say its window")

    def cut_long(self, texts: list[str], labels: list[str], *, hypothesis_template: str,
                 label_descriptions: Descriptions | None = None) -> tuple[list[str], list[bool]]:
        """The texts cut a little past the window (the model truncates the rest exactly as on the whole text), and
        whether each is longer than the window (:func:`service.long_text.cut_to_budget`)."""
        tokenizer, budget = self.window(labels, hypothesis_template=hypothesis_template,
                                        label_descriptions=label_descriptions)
        return cut_to_budget(tokenizer, texts, max(1, budget))

    def windows(self, text: str, labels: list[str], *, hypothesis_template: str, max_windows: int,
                label_descriptions: Descriptions | None = None) -> tuple[list[str], bool]:
        """The text as overlapping windows the model reads whole (:func:`service.long_text.split_windows`)."""
        tokenizer, budget = self.window(labels, hypothesis_template=hypothesis_template,
                                        label_descriptions=label_descriptions)
        return split_windows(tokenizer, text, max(1, budget), max_windows=max_windows)

    def sequences(self, n_texts: int, n_labels: int) -> int:
        """Sequences the engine(s) run for ``n_texts`` texts and ``n_labels`` labels (NLI: one pair each)."""
        return n_texts * n_labels

    def __call__(self, texts: list[str], labels: list[str], *, hypothesis_template: str,
                 multi_label: bool = False, long_text: LongText = "truncate",
                 max_windows: int = 64, max_sequences: int | None = None,
                 label_descriptions: Descriptions | None = None) -> list[ZeroShotResult]:
        """Classify ``texts`` against candidate ``labels``; one :class:`ZeroShotResult` per text, in order.

        Args:
            label_descriptions: ``{label: [description, ...]}``: more hypotheses for those labels
                (:func:`label_hypotheses`); each costs what a label costs (NLI: one pair a text).
            long_text: ``truncate``: a text longer than the model's window is read up to it (``truncated`` says
                so); ``chunks``: every text is scored as overlapping windows (at most ``max_windows``, the
                first ones) whose scores :func:`service.long_text.aggregate` combines - the maximum per label for
                multi-label, the renormalised mean of log-probabilities for single-label.
            max_sequences: with ``chunks``, most sequences (:meth:`sequences` of all windows) one call may cost.

        Raises:
            ValueError: an unknown ``long_text``.
            InputError: a label in the template leaves no room for text (NLI); the windows cost more than
                ``max_sequences``.
        """
        multi = multi_label or len(labels) == 1
        described = dict(label_descriptions=label_descriptions) if label_descriptions else {}
        if long_text == "truncate":
            cut, truncated = self.cut_long(texts, labels, hypothesis_template=hypothesis_template, **described)
            scores = self.scores(cut, labels, hypothesis_template=hypothesis_template, multi_label=multi, **described)
        elif long_text == "chunks":
            pieces: list[str] = []
            owners: list[int] = []
            truncated = []
            for i, text in enumerate(texts):
                windows, dropped = self.windows(text, labels, hypothesis_template=hypothesis_template,
                                                max_windows=max_windows, **described)
                pieces += windows
                owners += [i] * len(windows)
                truncated.append(dropped)
            cost = self.sequences(len(pieces), sum(map(len, label_hypotheses(labels, hypothesis_template,
                                                                              label_descriptions))))
            if max_sequences is not None and cost > max_sequences:
                raise InputError(f"with long_text=chunks these texts make {len(pieces)} windows, {cost} sequences for "
                                 f"the {self.name} method, over the limit of {max_sequences} (ZSC_MAX_QUEUE): send "
                                 "fewer or shorter texts, or fewer labels")
            window_scores = self.scores(pieces, labels, hypothesis_template=hypothesis_template, multi_label=multi,
                                        **described)
            owner = np.asarray(owners)
            scores = np.stack([aggregate(window_scores[owner == i], multi_label=multi) for i in range(len(texts))])
        else:
            raise ValueError(f"long_text must be 'truncate' or 'chunks', not {long_text!r}")
        return rank(texts, labels, scores, truncated)


class ZeroShotClassifier(ZeroShotMethod):
    """NLI zero-shot classification over any engine (the ``nli`` method): N x K forward passes.

    Args:
        tokenizer: a Hugging Face fast tokenizer of the model.
        engine: callable mapping a dict of ``(batch, seq_len)`` int64 arrays to ``(batch, n_classes)``
            float logits.
        label2id: the model's ``config.label2id``.
        max_length: max tokens per pair; longer pairs lose premise tokens (never hypothesis tokens).
        batch_size: pairs per engine call. Pairs are sorted by length first, so each batch is
            padded only to its own longest pair (dynamic padding).
        calibration: fitted temperature / Platt numbers; the identity gives the pipeline's scores.

    ``runner`` runs the tokenized pairs (a :class:`~service.batching.SequenceRunner` over ``engine``); the
    service swaps in a :class:`~service.batching.MicroBatcher` so concurrent requests share batches.
    """

    name = "nli"

    def __init__(self, tokenizer, engine: Engine, label2id: dict[str, int], *, max_length: int, batch_size: int = 32,
                 calibration: Calibration = IDENTITY):
        self.tokenizer = tokenizer
        self.engine = engine
        self.entailment_id = entailment_index(label2id)
        self.contradiction_id = contradiction_index(label2id, self.entailment_id)
        self.max_length = max_length
        self.batch_size = batch_size
        self.calibration = calibration
        self.runner: SequenceRunner = SequenceRunner(engine, batch_size=batch_size, pad_id=tokenizer.pad_token_id or 0)

    def logits(self, premises: list[str], hypotheses: list[str]) -> np.ndarray:
        """NLI logits for aligned pairs: ``(len(premises), n_classes)`` float32.

        Raises:
            ValueError: ``premises`` and ``hypotheses`` differ in length.
            InputError: a hypothesis alone does not fit in ``max_length`` tokens.
        """
        if len(premises) != len(hypotheses):
            raise ValueError(f"{len(premises)} premises but {len(hypotheses)} hypotheses")
        started = time.perf_counter()
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
        self.runner.tokenized(time.perf_counter() - started)
        return self.runner(encoded["input_ids"], encoded.get("token_type_ids"))

    def window(self, labels: list[str], *, hypothesis_template: str,
               label_descriptions: Descriptions | None = None) -> tuple[Any, int]:
        """The premise tokens every pair keeps: ``max_length`` less the longest hypothesis and the pair's specials."""
        hypotheses = [h for group in label_hypotheses(labels, hypothesis_template, label_descriptions) for h in group]
        longest = max(token_counts(self.tokenizer, hypotheses))
        return self.tokenizer, self.max_length - special_tokens(self.tokenizer, pair=True) - longest

    def raw(self, texts: list[str], labels: list[str], *, hypothesis_template: str,
            label_descriptions: Descriptions | None = None) -> np.ndarray:
        """NLI logits of every (text, label) pair: ``(len(texts), len(labels), n_classes)``; a label with
        descriptions gets the mean logits of its hypotheses (one pair each)."""
        groups = label_hypotheses(labels, hypothesis_template, label_descriptions)
        hypotheses = [h for group in groups for h in group]
        premises = [text for text in texts for _ in hypotheses]
        logits = self.logits(premises, hypotheses * len(texts))
        return merge_hypotheses(logits.reshape(len(texts), len(hypotheses), -1), [len(g) for g in groups])

    def probabilities(self, raw: np.ndarray, *, multi_label: bool) -> np.ndarray:
        """Scores from :meth:`raw`'s logits (see :func:`scores_from_logits`)."""
        return scores_from_logits(raw, entailment_id=self.entailment_id, contradiction_id=self.contradiction_id,
                                  multi_label=multi_label, calibration=self.calibration)
