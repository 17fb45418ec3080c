"""service.bias: the label-bias corrections of zero-shot scores over a pool."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.bias import estimate_bias, floor_shift, top_label_shares


def _scores(n=1000, k=3, seed=0, skew=(1.0, 0.5, -1.5)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) + np.asarray(skew[:k])
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def test_floor_raises_only_the_starved_labels_and_only_as_far_as_needed():
    p = _scores()
    before = top_label_shares(np.log(p))
    assert before[2] < 0.5 / 3  # label 2 is starved, label 1 is not
    estimate = estimate_bias(p, "floor")
    after = estimate.shares_after
    assert estimate.raised == [2] and estimate.shift[0] == 0 and estimate.shift[1] == 0 and estimate.shift[2] > 0
    need = int(np.ceil(0.5 * len(p) / 3))
    assert round(after[2] * len(p)) >= need  # reaches the floor ...
    smaller = np.log(p) + estimate.shift * np.array([0, 0, 1]) - np.array([0, 0, 1e-4])
    aim = need + np.ceil(0.02 * need)  # the floor and its 2% margin
    assert (smaller.argmax(1) == 2).sum() < aim  # ... and a hair less would not: the smallest raise that does
    assert "raised 1 starved label" in estimate.note


def test_no_starved_label_means_no_correction_and_the_scores_unchanged():
    p = _scores(skew=(0.3, 0.0, -0.3))
    estimate = estimate_bias(p, "floor")
    assert not estimate.corrected and estimate.apply(p) is not None
    np.testing.assert_array_equal(estimate.apply(p), p)
    assert estimate.note.startswith("no correction")


def test_batch_calibration_balances_the_mean_log_probabilities_and_applies_to_other_texts():
    p, other = _scores(seed=1), _scores(seed=2)
    estimate = estimate_bias(p, "batch")
    corrected = np.log(estimate.apply(p))
    centred = corrected - corrected.mean(1, keepdims=True)
    np.testing.assert_allclose(centred.mean(0), 0, atol=1e-9)
    moved = estimate.apply(other)  # the pool's shift, applied to texts scored the same way
    np.testing.assert_allclose(moved.sum(1), 1)
    assert top_label_shares(np.log(moved))[2] > top_label_shares(np.log(other))[2]


def test_floor_shift_reaches_every_floor_with_several_starved_labels():
    p = _scores(n=700, k=5, skew=(3.0, 1.0, -2.0, -2.0, -3.0))
    shift = floor_shift(np.log(p), 0.5)
    counts = np.bincount((np.log(p) + shift).argmax(1), minlength=5)
    assert counts.min() >= np.ceil(0.5 * 700 / 5)


@pytest.mark.parametrize("args, message", [
    (("none", 1.2), "floor_share"), (("median", 0.5), "unknown bias correction 'median'"),
])
def test_bad_settings_raise_value_error_saying_what(args, message):
    method, share = args
    with pytest.raises(ValueError, match=message):
        estimate_bias(_scores(n=50), method, floor_share=share) if method != "none" else floor_shift(
            np.log(_scores(n=50)), share)


def test_empty_or_one_label_pool_is_refused():
    with pytest.raises(ValueError, match="non-empty pool"):
        estimate_bias(np.empty((0, 3)))
    with pytest.raises(ValueError, match="at least 2 labels"):
        estimate_bias(np.ones((4, 1)))


@pytest.mark.slow
def test_floor_lifts_the_starved_label_of_a_real_sentiment_pool(data_dir):
    """The packaged encoder labels most IMDB reviews negative through the sentiment template: the floor gives
    'positive' its fair half-share back and the suggestions get more accurate (measured, not assumed)."""
    from pool.scorers import LocalScorer

    rows = [json.loads(line) for line in (data_dir / "classification/dev_tasks/imdb/test_sample5k.jsonl")
            .read_text(encoding="utf-8").split("\n")[:300] if line.strip()]
    gold = np.array([["negative", "positive"].index(r["label"]) for r in rows])
    scorer = LocalScorer(["negative", "positive"], "The sentiment of this review is {}.", method="embedding")
    try:
        p = scorer.score([r["text"] for r in rows])
    finally:
        scorer.close()
    estimate = estimate_bias(p, "floor")
    assert top_label_shares(np.log(p))[1] < 0.25 and estimate.raised == [1]
    assert (estimate.apply(p).argmax(1) == gold).mean() > (p.argmax(1) == gold).mean()
