"""annotate.adaptive: EM prior, pseudo-labels, the head, its guard and persistence.

Synthetic score matrices check the arithmetic; a real AG News slice (../shared/data) embedded by the packaged
all-MiniLM-L6-v2 checks that self-training and refits beat the zero-shot scores they start from.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from annotate.adaptive import (
    HeadConfig,
    adapt,
    em_prior,
    pool_pseudo_labels,
    select_pseudo_labels,
)
from service.head import AdaptError, AdaptiveHead, is_head_dir

AG_LABELS = ["world news", "sports", "business", "science and technology"]
AG_GOLD = {"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3}


def test_em_recovers_a_shifted_prior_from_calibrated_posteriors():
    rng = np.random.default_rng(0)
    truth = np.array([0.6, 0.3, 0.1])
    y = rng.choice(3, size=6000, p=truth)
    means = np.array([0.0, 1.5, 3.0])
    x = means[y] + rng.normal(size=6000)  # one Gaussian feature per class: exact likelihoods, so exact posteriors
    likelihood = np.exp(-0.5 * (x[:, None] - means[None, :]) ** 2)
    posterior_uniform = likelihood / likelihood.sum(axis=1, keepdims=True)
    prior, adjusted = em_prior(posterior_uniform)
    np.testing.assert_allclose(prior, truth, atol=0.04)
    np.testing.assert_allclose(adjusted.sum(axis=1), 1.0)
    assert (adjusted.argmax(1) == y).mean() > (posterior_uniform.argmax(1) == y).mean()


def test_pseudo_labels_follow_the_prior_rank_by_margin_and_skip_excluded_rows():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8]])
    rows, labels = select_pseudo_labels(scores, np.array([0.5, 0.5]), fraction=0.34)
    assert rows.tolist() == [0, 5] and labels.tolist() == [0, 1]
    rows, labels = select_pseudo_labels(scores, np.array([0.5, 0.5]), fraction=0.34,
                                        exclude=np.array([True, False, False, False, False, False]))
    assert rows.tolist() == [1, 5]
    rows, labels = select_pseudo_labels(scores, np.array([0.8, 0.2]), fraction=0.5)
    assert np.bincount(labels).tolist() == [2, 1]


def test_adapt_refuses_mismatched_inputs():
    with pytest.raises(AdaptError, match="matching embeddings"):
        adapt(np.zeros((3, 4)), np.full((2, 2), 0.5), ["a", "b"])
    with pytest.raises(AdaptError, match="label index"):
        adapt(np.zeros((2, 4)), np.full((2, 2), 0.5), ["a", "b"], reviewed={0: 5})


@pytest.fixture(scope="module")
def ag_slice(data_dir):
    """1,331 pool texts and 400 test texts of AG News: embeddings, zero-shot scores (embedding method), gold."""
    from pool.scorers import LocalScorer

    rows = [json.loads(line) for line in (data_dir / "classification/ag_news/train_unlabeled_8k_description_only.jsonl")
            .open(encoding="utf-8")][::6]  # the file is sorted by label: every 6th row spans all four
    test = [json.loads(line) for line in (data_dir / "classification/ag_news/test.jsonl").open(encoding="utf-8")][::19]
    scorer = LocalScorer(AG_LABELS, "This news article is about {}.", method="embedding", batch_size=128)
    try:
        pool_texts = [r["text"] for r in rows]
        test_texts = [f"{r['title']} {r['description']}" for r in test]
        out = {"x": scorer.embed(pool_texts), "p0": scorer.score(pool_texts), "y": np.array([AG_GOLD[r["label"]] for r in rows]),
               "xt": scorer.embed(test_texts), "p0t": scorer.score(test_texts),
               "yt": np.array([AG_GOLD[r["label"]] for r in test]), "encoder": scorer.encoder}
    finally:
        scorer.close()
    return out


@pytest.mark.slow
def test_self_training_and_reviews_beat_zero_shot_on_real_ag_news(ag_slice):
    s = ag_slice
    zero_shot = (s["p0t"].argmax(1) == s["yt"]).mean()
    pooled = adapt(s["x"], s["p0"], AG_LABELS, encoder=s["encoder"])
    assert pooled.head is not None and pooled.report.mode == "pseudo-labels"
    assert 0.05 < pooled.report.changed_share < HeadConfig().max_unreviewed_change
    adapted = (pooled.head.predict_proba(s["xt"]).argmax(1) == s["yt"]).mean()
    assert adapted > zero_shot + 0.02, (adapted, zero_shot)
    rng = np.random.default_rng(0)
    reviewed = {int(r): int(s["y"][r]) for r in rng.choice(len(s["y"]), 150, replace=False)}
    refit = adapt(s["x"], s["p0"], AG_LABELS, reviewed=reviewed, encoder=s["encoder"])
    assert refit.report.cv_accuracy >= refit.report.cv_accuracy_zero_shot
    refit_accuracy = (refit.head.predict_proba(s["xt"]).argmax(1) == s["yt"]).mean()
    assert refit_accuracy > zero_shot + 0.02, (refit_accuracy, zero_shot)
    np.testing.assert_allclose(refit.scores.sum(1), 1.0, atol=1e-9)


@pytest.mark.slow
def test_fits_are_deterministic_and_the_revision_follows_the_reviews(ag_slice, tmp_path):
    s = ag_slice
    reviewed = {0: int(s["y"][0]), 7: int(s["y"][7])}
    a = adapt(s["x"], s["p0"], AG_LABELS, reviewed=reviewed)
    b = adapt(s["x"], s["p0"], AG_LABELS, reviewed=dict(reversed(list(reviewed.items()))))
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-12)  # row order of the reviews: float rounding only
    assert a.report.revision == b.report.revision
    c = adapt(s["x"], s["p0"], AG_LABELS, reviewed={**reviewed, 9: int(s["y"][9])})
    assert c.report.revision != a.report.revision
    pseudo = pool_pseudo_labels(s["x"].astype(np.float64), s["p0"], HeadConfig())
    d = adapt(s["x"], s["p0"], AG_LABELS, reviewed=reviewed, pseudo=pseudo)
    np.testing.assert_allclose(d.scores, a.scores, atol=1e-12)
    # persistence: the directory the service serves gives the same probabilities
    path = a.head.save(tmp_path / "head")
    assert is_head_dir(path) and not is_head_dir(tmp_path)
    loaded = AdaptiveHead.load(path)
    np.testing.assert_allclose(loaded.predict_proba(s["xt"]), a.head.predict_proba(s["xt"]), atol=1e-5)
    assert loaded.agent == a.head.agent and loaded.encoder == a.head.encoder and loaded.labels == AG_LABELS
    with pytest.raises(AdaptError, match="dimension"):
        loaded.predict_proba(np.zeros((1, 3)))


@pytest.mark.slow
def test_guard_keeps_zero_shot_when_the_head_would_relabel_too_much(ag_slice):
    s = ag_slice
    strict = adapt(s["x"], s["p0"], AG_LABELS, config=HeadConfig(max_unreviewed_change=0.01))
    assert strict.head is None and strict.report.mode == "zero-shot" and "guard" in strict.report.note
    np.testing.assert_array_equal(strict.scores, s["p0"])


@pytest.mark.slow
def test_reviews_that_favour_zero_shot_keep_zero_shot(ag_slice):
    """Reviews that agree with the zero-shot argmax everywhere (a task whose labels are the teacher's): no head can
    beat the zero-shot scores on them in cross-validation unless it matches them."""
    s = ag_slice
    rows = np.random.default_rng(1).choice(len(s["y"]), 60, replace=False)
    reviewed = {int(r): int(s["p0"][r].argmax()) for r in rows}
    result = adapt(s["x"], s["p0"], AG_LABELS, reviewed=reviewed)
    if result.head is not None:
        assert result.report.cv_accuracy >= result.report.cv_accuracy_zero_shot
    else:
        assert result.report.mode == "zero-shot"
        np.testing.assert_array_equal(result.scores, s["p0"])


def test_single_reviewed_class_falls_back_to_pseudo_labels():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(2, 16))
    y = rng.integers(0, 2, 400)
    x = centers[y] + 0.8 * rng.normal(size=(400, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    logits = x @ centers.T * 3
    p0 = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    result = adapt(x, p0, ["a", "b"], reviewed={int(i): 0 for i in np.flatnonzero(y == 0)[:30]})
    assert result.report.cv_accuracy is None and result.report.reviewed == 30
