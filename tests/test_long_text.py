"""service/long_text.py on the real all-MiniLM-L6-v2 tokenizer: cuts that keep the model's tokens, windows that
cover the text with overlap, and the two aggregations."""

import numpy as np
import pytest

from service.long_text import OVERLAP, aggregate, cut_to_budget, special_tokens, split_windows

TEXT = " ".join(f"Sentence number {i} talks about the senate, the striker and the merger." for i in range(60))


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


def test_special_tokens(tokenizer):
    assert special_tokens(tokenizer, pair=False) == 2 and special_tokens(tokenizer, pair=True) == 3


@pytest.mark.parametrize("text", [TEXT, TEXT.replace(" ", "\n"), "unbreakable" * 400 + " tail", "Short text."])
def test_a_cut_text_tokenizes_as_the_whole_text_up_to_the_window(tokenizer, text):
    budget = 40
    (cut,), (truncated,) = cut_to_budget(tokenizer, [text], budget)
    whole = tokenizer(text, "This text is about sports.", truncation="only_first", max_length=48)["input_ids"]
    again = tokenizer(cut, "This text is about sports.", truncation="only_first", max_length=48)["input_ids"]
    assert again == whole
    assert truncated == (len(tokenizer.tokenize(text)) > budget)
    assert text.startswith(cut) and (len(cut) < len(text) / 4 if truncated else cut == text)


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
