"""Texts longer than a model's window: truncation (flagged) or overlapping token windows (``"long_text": "chunks"``).

A model reads at most ``budget`` tokens of a text (its window: the encoder's max sequence length, or for the
NLI cross-encoder its max length less the hypothesis and the special tokens). Two ways to treat what is beyond:

- ``truncate`` (default): the model reads the first ``budget`` tokens, as Hugging Face's pipelines do; the
  result says ``truncated: true``. :func:`cut_to_budget` first cuts such a text to a prefix a little past its
  window, at a whitespace, so the model's own tokenizer then truncates exactly as it would on the whole text
  but never tokenizes a megabyte K times (the NLI method tokenizes each text once per label).
- ``chunks``: :func:`split_windows` cuts the text into windows of ``budget`` tokens that overlap by a quarter
  (the ``stride`` of Hugging Face's fast tokenizers, as the question-answering pipeline uses for long
  contexts), every window is scored like a text, and :func:`aggregate` combines the windows' scores.

Thread safety: a Hugging Face fast tokenizer changes its Rust tokenizer's truncation settings in place when a call
asks for other settings than the previous one, and concurrent calls then fail with "Already borrowed"
(huggingface/tokenizers#537). The models' tokenizers are always called with the same settings; the counting here
goes through a copy of each (:func:`counting_tokenizer`) that is only ever called without truncation.
"""

from __future__ import annotations

import copy
import re
import threading
import weakref
from typing import Literal

import numpy as np

from service.calibration import softmax

LongText = Literal["truncate", "chunks"]
LONG_TEXT_MODES: tuple[str, ...] = ("truncate", "chunks")
#: Consecutive windows share this fraction of a window's tokens, so no sentence is only ever seen cut in two.
OVERLAP = 0.25
_EPS = 1e-12
_SPACE = re.compile(r"\s")
_copies: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_copies_lock = threading.Lock()


def counting_tokenizer(tokenizer):
    """A copy of ``tokenizer`` kept for counting (one per tokenizer), so that counting never changes the settings
    of the tokenizer the model's inputs come from (see the module docstring)."""
    with _copies_lock:
        found = _copies.get(tokenizer)
        if found is None:
            found = _copies[tokenizer] = copy.deepcopy(tokenizer)
        return found


def _offsets(tokenizer, texts: list[str]) -> list[list[tuple[int, int]]]:
    """Character offsets of every token of every text (no special tokens, no truncation)."""
    return counting_tokenizer(tokenizer)(texts, add_special_tokens=False, return_offsets_mapping=True,
                                         return_attention_mask=False, return_token_type_ids=False,
                                         verbose=False)["offset_mapping"]


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Tokens of each text, special tokens excluded (thread-safe: see the module docstring)."""
    return [len(ids) for ids in counting_tokenizer(tokenizer)(
        texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False,
        verbose=False)["input_ids"]]


def special_tokens(tokenizer, *, pair: bool) -> int:
    """Special tokens the tokenizer adds to one sequence (``pair=False``) or to a pair (``[CLS] a [SEP] b [SEP]``)."""
    return int(tokenizer.num_special_tokens_to_add(pair=pair))


def cut_to_budget(tokenizer, texts: list[str], budget: int) -> tuple[list[str], list[bool]]:
    """Each text, cut a little past its first ``budget`` tokens, and whether it had more than ``budget`` tokens.

    The cut falls at the first whitespace after token ``budget + 1`` ends (pre-tokenizers split words there), so
    tokenizing the cut text yields the same first ``budget + 1`` tokens as the whole text; a text without such a
    whitespace is kept whole. Texts within the budget are returned unchanged.

    Args:
        tokenizer: a Hugging Face fast tokenizer (offsets are needed).
        texts: the texts.
        budget: most tokens of a text the model reads (special tokens excluded), >= 1.

    Returns:
        ``(texts, truncated)``, both ``len(texts)`` long.
    """
    cut, truncated = [], []
    for text, offsets in zip(texts, _offsets(tokenizer, texts)):
        if len(offsets) <= budget:
            cut.append(text)
            truncated.append(False)
            continue
        end = offsets[min(budget + 1, len(offsets) - 1)][1]
        space = _SPACE.search(text, end)
        cut.append(text[:space.start()] if space else text)
        truncated.append(True)
    return cut, truncated


def split_windows(tokenizer, text: str, budget: int, *, max_windows: int) -> tuple[list[str], bool]:
    """The text as overlapping windows of at most ``budget`` tokens, each a substring of ``text``.

    Windows advance by ``budget - round(OVERLAP * budget)`` tokens (as the fast tokenizer's overflowing tokens with
    ``stride`` do); each is cut from the text by its first and last tokens' character offsets, so it is scored as
    ordinary text (re-tokenizing a window can differ from the original tokens at its first word only).

    Args:
        tokenizer: a Hugging Face fast tokenizer.
        text: one text.
        budget: tokens per window (special tokens excluded), >= 1.
        max_windows: most windows kept (the first ones); an abuse guard.

    Returns:
        ``(windows, truncated)``: at least one window; ``truncated`` when windows beyond ``max_windows`` were dropped.
    """
    budget = max(1, budget)
    step = budget - min(budget - 1, round(OVERLAP * budget))
    offsets = [o for o in _offsets(tokenizer, [text])[0] if o[1] > o[0]]
    if len(offsets) <= budget:
        return [text], False
    starts = list(range(0, len(offsets) - budget + step, step))  # the last window ends at the last token
    windows = [text[offsets[start][0]:offsets[min(start + budget, len(offsets)) - 1][1]]
               for start in starts[:max_windows]]
    return windows, len(starts) > max_windows


def aggregate(window_scores: np.ndarray, *, multi_label: bool) -> np.ndarray:
    """One text's scores ``(n_labels,)`` from its windows' scores ``(n_windows, n_labels)``.

    - multi-label: the maximum over windows, per label. Each label asks "is this mentioned anywhere?": a
      label supported by one window is supported by the document, however long the rest is.
    - single-label: the mean over windows of the log-probabilities, renormalised by a softmax (the normalised
      geometric mean, a log-linear pool or product of experts, Hinton 2002; the same pooling as the ensemble
      method). Each window is a witness of the one label of the whole text: a label every window finds
      plausible wins over one that a single window is sure of and the rest rule out, and no window's
      overconfidence can override the others as a max or an arithmetic mean of near-one-hot rows would.

    Raises:
        ValueError: ``window_scores`` is not 2-D or has no rows.
    """
    if window_scores.ndim != 2 or not len(window_scores):
        raise ValueError(f"window_scores must be (n_windows >= 1, n_labels), got shape {window_scores.shape}")
    if multi_label:
        return window_scores.max(axis=0)
    return softmax(np.log(np.clip(window_scores, _EPS, None)).mean(axis=0), axis=-1)
