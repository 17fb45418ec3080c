"""Texts longer than a model's window: truncation (flagged) or overlapping token windows (``"long_text": "chunks"``).

A model reads at most ``budget`` tokens of a text (its window: the encoder's max sequence length, or for the
NLI cross-encoder its max length less the hypothesis and the special tokens). Two ways to treat what is beyond:

- ``truncate`` (default): the model reads the first ``budget`` tokens, as Hugging Face's pipelines do; the
  result says ``truncated: true``. :func:`cut_to_budget` first cuts such a text to a prefix a little past its
  window, at a word boundary, so the model's own tokenizer then truncates exactly as it would on the whole text
  but never tokenizes a megabyte K times (the NLI method tokenizes each text once per label).
- ``chunks``: :func:`split_windows` cuts the text into windows of ``budget`` tokens that overlap by a quarter
  (the ``stride`` of Hugging Face's fast tokenizers, as the question-answering pipeline uses for long
  contexts), every window is scored like a text, and :func:`aggregate` combines the windows' scores.

Neither ever tokenizes a whole long text: a fast tokenizer tokenizes all of a text before it truncates, so a text
of a million characters without whitespace (CJK script, a base64 blob) once cost seconds before any cut.
:func:`exact_prefix` tokenizes a prefix of characters instead, a little longer than the tokens needed, and keeps
the tokens of its complete words only (pre-tokenizers split words locally, so they are the whole text's tokens);
the prefix doubles while it holds too few of them.

Thread safety: a Hugging Face fast tokenizer changes its Rust tokenizer's truncation settings in place when a call
asks for other settings than the previous one, and concurrent calls then fail with "Already borrowed"
(huggingface/tokenizers#537). The models' tokenizers are always called with the same settings; the counting here
goes through a copy of each (:func:`counting_tokenizer`) that is only ever called without truncation.
"""

from __future__ import annotations

import copy
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


#: First guess of characters per token when tokenizing a prefix: about twice the 4.45 characters a token of the
#: packaged MiniLM's WordPiece tokenizer averages on AG News titles (the first 2,000 of its test split). A wrong
#: guess costs one more, doubled, round; never a wrong cut.
CHARS_PER_TOKEN_GUESS = 8
#: The prefix stops doubling at this many characters a token, or at ``LONGEST_PREFIX_CHARS`` when that is more:
#: past it, a single "word" longer than the text the window needs (a run of CJK characters a SentencePiece
#: tokenizer reads as one word, a base64 blob) is cut by characters, so only tokens far beyond the window can
#: differ from the whole text's.
MAX_CHARS_PER_TOKEN = 64
#: 64 Ki characters: about 0.4 s to tokenize at the slowest rate measured here (the packaged MiniLM's tokenizer on
#: CJK text, one token a character: 120,000 characters in 0.69 s).
LONGEST_PREFIX_CHARS = 1 << 16


def exact_prefix(tokenizer, texts: list[str], n_tokens: int) -> list[tuple[list[tuple[int, int]], int, bool]]:
    """The character offsets of each text's first ``n_tokens`` tokens (no special tokens, no truncation), found
    without tokenizing the whole text, and where a prefix holding them can be cut.

    Each text's prefix of ``CHARS_PER_TOKEN_GUESS * n_tokens`` characters is tokenized (all texts in one call); the
    tokens of its last, possibly cut, word are dropped and the rest are the whole text's tokens (pre-tokenizers
    split words from the characters around a boundary only, e.g. BERT's whitespace and punctuation split). A
    prefix with fewer than ``n_tokens`` such tokens doubles, up to ``MAX_CHARS_PER_TOKEN * n_tokens`` characters
    or ``LONGEST_PREFIX_CHARS``, whichever is more; a text still undecided there is cut by characters there.

    Args:
        tokenizer: a Hugging Face fast tokenizer (offsets and word ids are needed).
        texts: the texts.
        n_tokens: tokens wanted per text, >= 1.

    Returns:
        Per text ``(offsets, cut, exact)``: ``offsets`` of its first ``min(n_tokens, tokens in the text)`` tokens;
        ``cut``, a character index such that ``text[:cut]`` tokenizes to those same first tokens: the start of the
        first word after token ``n_tokens``, or ``len(text)``; ``exact`` False when the text is to be cut by
        characters (the prefix reached its most characters inside one word): then ``offsets`` holds the tokens of
        the prefix's complete words only, maybe fewer than ``n_tokens``, and ``cut`` is the prefix's length.
    """
    n_tokens = max(1, n_tokens)
    found: list = [None] * len(texts)
    pending = list(range(len(texts)))
    chars, longest = CHARS_PER_TOKEN_GUESS * n_tokens, max(MAX_CHARS_PER_TOKEN * n_tokens, LONGEST_PREFIX_CHARS)
    while pending:
        prefixes = [texts[i][:chars] for i in pending]
        encoded = counting_tokenizer(tokenizer)(prefixes, add_special_tokens=False, return_offsets_mapping=True,
                                                return_attention_mask=False, return_token_type_ids=False,
                                                verbose=False)
        last_round = chars >= longest
        again = []
        for j, i in enumerate(pending):
            offsets, words = encoded["offset_mapping"][j], encoded.word_ids(j)
            whole = len(prefixes[j]) == len(texts[i])
            complete = len(words)  # tokens of complete words: all of a whole text, else all but the last word's
            if not whole:
                while complete and words[complete - 1] == words[-1]:
                    complete -= 1
            if whole or complete >= n_tokens:
                cut = len(texts[i]) if whole else offsets[complete][0]
                if len(offsets) > n_tokens:  # the first token of another word than token n_tokens' is a boundary
                    first_other = next((k for k in range(n_tokens, len(words)) if words[k] != words[n_tokens - 1]),
                                       None)
                    if first_other is not None:
                        cut = offsets[first_other][0]
                found[i] = (offsets[:n_tokens], cut, True)
            elif last_round:
                found[i] = (offsets[:complete], len(prefixes[j]), False)
            else:
                again.append(i)
        pending, chars = again, min(2 * chars, longest)
    return found


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

    The cut falls at the start of the first word after token ``budget + 1`` (pre-tokenizers split words there), so
    tokenizing the cut text yields the same first ``budget + 1`` tokens as the whole text; the whole text is never
    tokenized (:func:`exact_prefix`), and a text whose first ``budget + 1`` tokens cannot be told within the
    longest prefix (one enormous word) is cut by characters and marked truncated. Texts within the budget are
    returned unchanged.

    Args:
        tokenizer: a Hugging Face fast tokenizer (offsets and word ids are needed).
        texts: the texts.
        budget: most tokens of a text the model reads (special tokens excluded), >= 1.

    Returns:
        ``(texts, truncated)``, both ``len(texts)`` long.
    """
    cut, truncated = [], []
    for text, (offsets, end, exact) in zip(texts, exact_prefix(tokenizer, texts, budget + 1)):
        if exact and len(offsets) <= budget:
            cut.append(text)
            truncated.append(False)
        else:
            cut.append(text[:end])
            truncated.append(True)
    return cut, truncated


def split_windows(tokenizer, text: str, budget: int, *, max_windows: int) -> tuple[list[str], bool]:
    """The text as overlapping windows of at most ``budget`` tokens, each a substring of ``text``.

    Windows advance by ``budget - round(OVERLAP * budget)`` tokens (as the fast tokenizer's overflowing tokens with
    ``stride`` do); each is cut from the text by its first and last tokens' character offsets, so it is scored as
    ordinary text (re-tokenizing a window can differ from the original tokens at its first word only). Only the
    tokens the first ``max_windows`` windows need are found (:func:`exact_prefix`), never the whole text's.

    Args:
        tokenizer: a Hugging Face fast tokenizer.
        text: one text.
        budget: tokens per window (special tokens excluded), >= 1.
        max_windows: most windows kept (the first ones); an abuse guard.

    Returns:
        ``(windows, truncated)``: at least one window; ``truncated`` when windows beyond ``max_windows`` were dropped
        (or the text was cut by characters, see :func:`exact_prefix`).
    """
    budget = max(1, budget)
    step = budget - min(budget - 1, round(OVERLAP * budget))
    needed = (max(1, max_windows) - 1) * step + budget + 1  # one token past the last kept window: are there more?
    found, end, exact = exact_prefix(tokenizer, [text], needed)[0]
    offsets = [o for o in found if o[1] > o[0]]
    if len(offsets) <= budget:
        return ([text], False) if exact else ([text[:end]], True)
    starts = list(range(0, max(1, len(offsets) - budget + step), step))  # the last window ends at the last token
    windows = [text[offsets[start][0]:offsets[min(start + budget, len(offsets)) - 1][1]]
               for start in starts[:max_windows]]
    return windows, len(starts) > max_windows or not exact


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
