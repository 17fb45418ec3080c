"""service/long_text.py on the real all-MiniLM-L6-v2 tokenizer: cuts that keep the model's tokens, windows that
cover the text with overlap, long texts never tokenized whole, and the two aggregations."""

import numpy as np
import pytest

from service import long_text
from service.long_text import (
    CHARS_PER_TOKEN_GUESS,
    LONGEST_PREFIX_CHARS,
    OVERLAP,
    aggregate,
    cut_to_budget,
    exact_prefix,
    special_tokens,
    split_windows,
)

TEXT = " ".join(f"Sentence number {i} talks about the senate, the striker and the merger." for i in range(60))
#: CJK text without whitespace or punctuation: one token a character for BERT's tokenizer, no whitespace to cut at.
CJK = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(30_000))
#: A 4,000-character "word" (a base64-like blob), then ordinary words.
BLOB = "QmFzZTY0" * 500 + " " + TEXT


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


def test_special_tokens(tokenizer):
    assert special_tokens(tokenizer, pair=False) == 2 and special_tokens(tokenizer, pair=True) == 3


@pytest.mark.parametrize("text", [TEXT, TEXT.replace(" ", "\n"), "unbreakable" * 400 + " tail", "Short text.", CJK,
                                  CJK[:30] + " " + CJK, BLOB, "unbreakable" * 400 + " " + CJK])
def test_a_cut_text_tokenizes_as_the_whole_text_up_to_the_window(tokenizer, text):
    budget = 40
    (cut,), (truncated,) = cut_to_budget(tokenizer, [text], budget)
    whole = tokenizer(text, "This text is about sports.", truncation="only_first", max_length=48)["input_ids"]
    again = tokenizer(cut, "This text is about sports.", truncation="only_first", max_length=48)["input_ids"]
    assert again == whole
    assert truncated == (len(tokenizer.tokenize(text)) > budget)
    assert text.startswith(cut) and (cut == text if not truncated else  # cut in the word after token budget + 1
                                     budget < len(tokenizer.tokenize(cut)) < budget + 10)


class Recorder:
    """The real tokenizer, recording the length of every text it is called on (a spy, not a stand-in)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def __call__(self, texts, **kwargs):
        self.lengths.extend(len(t) for t in texts)
        return self.tokenizer(texts, **kwargs)


@pytest.fixture()
def recorded(tokenizer, monkeypatch):
    """The counting tokenizer ``service.long_text`` uses for ``tokenizer``, recording what it tokenizes."""
    recorder = Recorder(long_text.counting_tokenizer(tokenizer))
    monkeypatch.setitem(long_text._copies, tokenizer, recorder)
    return recorder


def test_a_huge_text_without_whitespace_is_cut_by_characters_before_tokenization(tokenizer, recorded):
    huge = CJK * 200  # 6,000,000 characters (18 MB of UTF-8), no whitespace
    (cut,), (truncated,) = cut_to_budget(tokenizer, [huge], 254)
    assert truncated and huge.startswith(cut) and len(cut) == 255  # one token a character: cut after token 255
    assert max(recorded.lengths) == CHARS_PER_TOKEN_GUESS * 255  # one prefix, never the 6 M characters
    window = 254 + len(tokenizer.tokenize("This text is about sports.")) + 3  # the premise's budget: 254 tokens
    model = dict(truncation="only_first", max_length=window)  # the model's own truncation reads the same tokens
    assert tokenizer(cut, "This text is about sports.", **model)["input_ids"] == \
        tokenizer(huge[:20_000], "This text is about sports.", **model)["input_ids"]
    windows, dropped = split_windows(tokenizer, huge, 100, max_windows=4)
    assert dropped and [len(w) for w in windows] == [100] * 4 and windows[1] == huge[75:175]
    assert max(recorded.lengths) <= CHARS_PER_TOKEN_GUESS * (3 * 75 + 100 + 1)


def test_a_word_longer_than_the_longest_prefix_is_cut_by_characters(tokenizer, recorded):
    text = "x" * (4 * LONGEST_PREFIX_CHARS) + " tail"
    (offsets, cut, exact), = exact_prefix(tokenizer, [text], 41)
    assert not exact and offsets == [] and cut == LONGEST_PREFIX_CHARS
    assert max(recorded.lengths) == LONGEST_PREFIX_CHARS  # the prefix doubled up to the longest, then stopped
    (short,), (truncated,) = cut_to_budget(tokenizer, [text], 40)
    assert short == text[:LONGEST_PREFIX_CHARS] and truncated  # marked truncated: the model reads a prefix
    assert split_windows(tokenizer, text, 40, max_windows=3) == ([text[:LONGEST_PREFIX_CHARS]], True)


def test_exact_prefix_gives_the_whole_texts_first_tokens(tokenizer):
    texts = [TEXT, CJK, BLOB, "Short text.", ""]
    for n in (1, 7, 300):
        for text, (offsets, cut, exact) in zip(texts, exact_prefix(tokenizer, texts, n)):
            whole = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            assert exact and offsets == whole["offset_mapping"][:n]
            again = tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
            assert again[:n] == whole["input_ids"][:n] and (cut == len(text) or len(again) >= n)


def test_windows_cover_the_text_with_overlap(tokenizer):
    budget = 50
    windows, dropped = split_windows(tokenizer, TEXT, budget, max_windows=100)
    assert not dropped and len(windows) > 10
    assert all(w in TEXT for w in windows) and TEXT.startswith(windows[0]) and TEXT.endswith(windows[-1])
    assert all(len(tokenizer.tokenize(w)) <= budget + 1 for w in windows)  # a window may start inside a word
    ids = tokenizer.tokenize(TEXT)
    stride = round(OVERLAP * budget)
    assert len(windows) == 1 + -(-(len(ids) - budget) // (budget - stride))  # every token in some window
    for left, right in zip(windows, windows[1:]):  # consecutive windows share text
        assert left[-20:] in right


@pytest.mark.parametrize("text", [CJK[:3000], BLOB])
def test_windows_without_whitespace_equal_the_whole_texts(tokenizer, text):
    budget, step = 50, 50 - round(OVERLAP * 50)
    windows, dropped = split_windows(tokenizer, text, budget, max_windows=5)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert dropped and len(windows) == 5
    assert windows == [text[offsets[s][0]:offsets[s + budget - 1][1]] for s in range(0, 5 * step, step)]


def test_windows_beyond_the_limit_are_dropped_and_flagged(tokenizer):
    windows, dropped = split_windows(tokenizer, TEXT, 50, max_windows=3)
    assert len(windows) == 3 and dropped
    assert split_windows(tokenizer, "Short text.", 50, max_windows=3) == (["Short text."], False)


def test_aggregate_max_for_multi_label_and_mean_log_probability_for_single_label():
    windows = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    np.testing.assert_allclose(aggregate(windows, multi_label=True), [0.7, 0.7, 0.1])
    single = aggregate(windows, multi_label=False)
    geometric = np.exp(np.log(windows).mean(axis=0))
    np.testing.assert_allclose(single, geometric / geometric.sum())
    assert single.sum() == pytest.approx(1) and single.argmax() == 0  # two windows of three say label 0
    np.testing.assert_allclose(aggregate(windows[:1], multi_label=False), windows[0])
    with pytest.raises(ValueError, match="n_windows"):
        aggregate(np.empty((0, 3)), multi_label=False)
