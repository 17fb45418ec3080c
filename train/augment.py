"""Data augmentation for distillation, after Tang et al. 2019 ("Distilling Task-Specific Knowledge from BERT into
Simple Neural Networks", arXiv:1903.12136, section 3.3): the teacher labels many more inputs than the pool holds.

Per copy of a text, each word (a run of letters/digits; punctuation is kept as its own token) is, with a uniform
draw ``X``:

- masked (``X < p_mask``): replaced by the teacher tokenizer's mask token (``[MASK]``);
- replaced (``p_mask <= X < p_mask + p_replace``): by one of its ``neighbours`` nearest words in the teacher's
  WordPiece embedding table (cosine; whole-word tokens only). Tang et al. replace a word with one of the same part
  of speech; the embedding neighbour needs no POS tagger and keeps the word's role at least as often;
- kept otherwise.

Then, with probability ``p_ngram``, only an n-gram of the result is kept (``n`` uniform in ``1..max_ngram``).
Defaults are the paper's (``p_mask = p_replace = 0.1``, ``p_ngram = 0.25``, ``n <= 5``).

Deterministic: copy ``c`` of text ``i`` draws from ``numpy.random.default_rng([seed, i, c])``, so the same inputs
and seed give the same texts in any order or process. Augmented copies never carry a human label
(:func:`augment_examples` returns new soft-label-only examples; the originals are not touched): the teacher labels
them.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_WORD = re.compile(r"^[^\W\d_]{2,}$", re.UNICODE)


@dataclass
class AugmentConfig:
    """Probabilities of Tang et al. 2019 (defaults are theirs) and the neighbour count of word replacement."""

    p_mask: float = 0.1
    p_replace: float = 0.1
    p_ngram: float = 0.25
    max_ngram: int = 5
    neighbours: int = 10

    def __post_init__(self) -> None:
        for name in ("p_mask", "p_replace", "p_ngram"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.p_mask + self.p_replace > 1.0:
            raise ValueError("p_mask + p_replace must not exceed 1")
        if self.max_ngram < 1 or self.neighbours < 1:
            raise ValueError("max_ngram and neighbours must be at least 1")


@dataclass
class AugmentStats:
    """What an augmentation produced: texts in, copies asked, new distinct texts, seconds."""

    source_texts: int = 0
    copies: int = 0
    produced: int = 0
    seconds: float = 0.0
    neighbour_words: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"source_texts": self.source_texts, "copies_per_text": self.copies, "augmented_texts": self.produced,
                "augment_seconds": round(self.seconds, 2), "neighbour_words": self.neighbour_words, **self.extra}


class Augmenter:
    """Masking, embedding-neighbour replacement and n-gram sampling of texts (see the module docstring).

    Args:
        mask_token: the string that stands for a masked word (the teacher tokenizer's ``mask_token``).
        vocabulary: ``V`` WordPiece tokens, index = row of ``embeddings``; ``None`` disables replacement.
        embeddings: ``(V, d)`` word-embedding table of the teacher's encoder.
        config: :class:`AugmentConfig`.
    """

    def __init__(self, mask_token: str = "[MASK]", vocabulary: list[str] | None = None,
                 embeddings: np.ndarray | None = None, config: AugmentConfig | None = None) -> None:
        self.mask_token = mask_token
        self.config = config or AugmentConfig()
        self._neighbours: dict[str, list[str]] = {}
        self._index: dict[str, int] = {}
        self._candidates = None
        if vocabulary is not None and embeddings is not None:
            if len(vocabulary) != len(embeddings):
                raise ValueError(f"{len(vocabulary)} vocabulary tokens but {len(embeddings)} embedding rows")
            rows = [i for i, token in enumerate(vocabulary) if _WORD.match(token)]
            self._candidate_words = [vocabulary[i] for i in rows]
            table = np.asarray(embeddings, dtype=np.float32)[rows]
            self._candidates = table / np.clip(np.linalg.norm(table, axis=1, keepdims=True), 1e-12, None)
            self._index = {word: j for j, word in enumerate(self._candidate_words)}

    @classmethod
    def from_encoder(cls, base_dir: str | Path, config: AugmentConfig | None = None) -> "Augmenter":
        """An augmenter with the tokenizer vocabulary and word-embedding table of the encoder in ``base_dir``."""
        from transformers import AutoTokenizer

        from train.students import _encoder_embeddings

        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        vocab = tokenizer.get_vocab()
        table = _encoder_embeddings(Path(base_dir)).numpy()
        vocabulary = [""] * table.shape[0]
        for token, i in vocab.items():
            if i < len(vocabulary):
                vocabulary[i] = token
        return cls(tokenizer.mask_token or "[MASK]", vocabulary, table, config)

    @property
    def can_replace(self) -> bool:
        return self._candidates is not None

    def prepare_neighbours(self, words) -> int:
        """Nearest neighbours (cosine, excluding the word) of every ``words`` entry that is a whole-word token,
        computed in batches; returns how many words have neighbours."""
        if not self.can_replace:
            return 0
        wanted = sorted({w.lower() for w in words if w.lower() in self._index and w.lower() not in self._neighbours})
        k = self.config.neighbours
        for start in range(0, len(wanted), 1024):
            chunk = wanted[start:start + 1024]
            rows = np.fromiter((self._index[w] for w in chunk), dtype=np.int64, count=len(chunk))
            similarity = self._candidates[rows] @ self._candidates.T
            similarity[np.arange(len(chunk)), rows] = -np.inf
            top = np.argpartition(-similarity, k, axis=1)[:, :k]
            order = np.take_along_axis(similarity, top, axis=1).argsort(axis=1)[:, ::-1]
            top = np.take_along_axis(top, order, axis=1)
            for word, neighbour_rows in zip(chunk, top):
                self._neighbours[word] = [self._candidate_words[j] for j in neighbour_rows]
        return len(self._neighbours)

    def augment_text(self, text: str, rng: np.random.Generator) -> str:
        """One augmented copy of ``text`` (see the module docstring)."""
        config = self.config
        tokens = _TOKEN.findall(text)
        out = []
        for token in tokens:
            if not token[0].isalnum():
                out.append(token)
                continue
            x = rng.random()
            if x < config.p_mask:
                out.append(self.mask_token)
            elif x < config.p_mask + config.p_replace and self.can_replace:
                neighbours = self._neighbours.get(token.lower())
                if neighbours is None and token.lower() in self._index:
                    self.prepare_neighbours([token])
                    neighbours = self._neighbours.get(token.lower())
                out.append(neighbours[int(rng.integers(len(neighbours)))] if neighbours else token)
            else:
                out.append(token)
        if out and rng.random() < config.p_ngram:
            n = int(rng.integers(1, config.max_ngram + 1))
            if n < len(out):
                start = int(rng.integers(0, len(out) - n + 1))
                out = out[start:start + n]
        return " ".join(out)

    def augment(self, texts: list[str], copies: int, seed: int) -> list[tuple[int, str]]:
        """``copies`` augmented versions of each text as ``(source index, text)``, in source order; copy ``c`` of text
        ``i`` is drawn from ``default_rng([seed, i, c])``."""
        if copies < 0:
            raise ValueError(f"copies must be >= 0, got {copies}")
        if copies and self.can_replace:  # every word's neighbours in a few batched products, not one by one
            self.prepare_neighbours({w for t in texts for w in _TOKEN.findall(t) if w[0].isalpha()})
        out = []
        for i, text in enumerate(texts):
            for c in range(copies):
                out.append((i, self.augment_text(text, np.random.default_rng([seed, i, c]))))
        return out


def augment_examples(examples, augmenter: Augmenter, copies: int, seed: int):
    """New training examples from ``copies`` augmented versions of each example's text.

    The new examples carry no label and no soft scores (the caller's teacher scores them); texts identical to an
    original or to an earlier copy are dropped. The ``examples`` themselves are not modified, so a human label
    stays on its record only.

    Returns:
        ``(new_examples, AugmentStats)``.
    """
    from train.student_data import Example

    began = time.perf_counter()
    texts = [e.text for e in examples]
    seen = set(texts)
    new = []
    for _, text in augmenter.augment(texts, copies, seed):
        if text and text not in seen:
            seen.add(text)
            new.append(Example(text))
    stats = AugmentStats(source_texts=len(texts), copies=copies, produced=len(new),
                         seconds=time.perf_counter() - began, neighbour_words=len(augmenter._neighbours))
    logger.info("augmentation: %d new texts from %d x %d copies in %.1f s", len(new), len(texts), copies, stats.seconds)
    return new, stats
