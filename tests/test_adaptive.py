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
    assert strict.head is None and strict.report.mode == "zero-shot" and "no review yet" in strict.report.note
    assert "would change" in strict.report.note
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


def test_single_reviewed_class_serves_the_better_of_zero_shot_and_the_pool_head_on_the_reviews():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(2, 16))
    y = rng.integers(0, 2, 400)
    x = centers[y] + 0.8 * rng.normal(size=(400, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    logits = x @ centers.T * 3
    p0 = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    reviewed = {int(i): 0 for i in np.flatnonzero(y == 0)[:30]}
    result = adapt(x, p0, ["a", "b"], reviewed=reviewed)
    assert result.report.reviewed == 30 and "only 1 reviewed label" in result.report.note
    rows = np.array(list(reviewed))
    served = (result.scores[rows].argmax(1) == 0).mean()
    assert served >= (p0[rows].argmax(1) == 0).mean() and result.report.cv_accuracy == served


@pytest.fixture(scope="module")
def one_topic(data_dir):
    """The issue's new user: a 300-text pool of one topic (AG News business descriptions), scored for the four AG News
    labels by the embedding method; zero-shot gets 0.78 of it right."""
    from pool.scorers import LocalScorer

    rows = [json.loads(line) for line in (data_dir / "classification/ag_news/train_unlabeled_8k_description_only.jsonl")
            .open(encoding="utf-8")]
    texts = [r["text"] for r in rows if r["label"] == "Business"][:300]
    scorer = LocalScorer(AG_LABELS, "This news article is about {}.", method="embedding", batch_size=128)
    try:
        return scorer.embed(texts), scorer.score(texts)
    finally:
        scorer.close()


@pytest.mark.slow
def test_forty_reviews_of_one_label_never_serve_worse_than_push_did(one_topic):
    """push adapts the pool (right on 242 of the 260 pending records against 229 for zero-shot); 40 reviews, all "business",
    lowest score first; refresh must not fall back to the zero-shot scores that the reviews show are worse (the issue:
    correct pending suggestions fell from 214 to 181 of 260), and must say what it did and why."""
    x, p0 = one_topic
    business = AG_LABELS.index("business")
    # today's precision guard keeps zero-shot on this pool before any review (the other three classes' pseudo-labels
    # are expected right 46% of the time); without it push serves the head, the case of the issue, which the refresh
    # rule under test must then not throw away
    # the floor correction (on by default) would give the three absent labels 12.5% of this one-label pool: a pool
    # whose candidate labels do not all occur is the case for ANNOTATE_BIAS_CORRECTION=none, tested here
    config = HeadConfig(min_pseudo_precision=0.0, bias_correction="none")
    assert adapt(x, p0, AG_LABELS, config=HeadConfig(bias_correction="none")).head is None
    push = adapt(x, p0, AG_LABELS, config=config)
    assert push.head is not None and push.report.note.startswith("pool-adapted head")
    reviewed_rows = np.argsort(push.scores.max(1), kind="stable")[:40]
    refresh = adapt(x, p0, AG_LABELS, reviewed={int(r): business for r in reviewed_rows}, config=config)
    pending = np.setdiff1d(np.arange(len(x)), reviewed_rows)
    right = {name: int((scores[pending].argmax(1) == business).sum())
             for name, scores in (("push", push.scores), ("refresh", refresh.scores), ("zero-shot", p0))}
    assert right["zero-shot"] < right["push"], right  # the case of the issue: zero-shot is worse here (229 < 242)
    assert right["refresh"] >= right["push"], right
    assert refresh.head.revision == push.head.revision  # the same head, so refresh rewrites nothing
    assert "kept the pool-adapted head (only 1 reviewed label)" in refresh.report.note
    assert "against" in refresh.report.note and "for zero-shot" in refresh.report.note


@pytest.mark.slow
def test_never_worse_holds_for_teacher_scores_no_linear_map_reproduces(ag_slice):
    """nli and ensemble scores are no linear function of the sentence embeddings (the linearization is exact only for
    the embedding method), so the zero-shot candidate must be measured as served. Teacher scores here (constructed,
    since no real teacher is this far from linear): 98% accurate, errors and confidences at random, so no linear map
    of the embeddings (a linear probe on AG News gets ~0.88) comes near it; the heads, measured out of fold, are all
    worse than the scores as served, and before this guard a correction of the linearized scores served anyway when
    it beat the linearization."""
    s = ag_slice
    rng = np.random.default_rng(3)
    n, k = len(s["y"]), len(AG_LABELS)
    top = np.where(rng.random(n) < 0.98, s["y"], rng.integers(0, k, n))
    logits = rng.normal(scale=0.5, size=(n, k))
    logits[np.arange(n), top] += rng.uniform(0.5, 3.0, n)
    p0 = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    reviewed_rows = rng.choice(n, 120, replace=False)
    result = adapt(s["x"], p0, AG_LABELS, reviewed={int(r): int(s["y"][r]) for r in reviewed_rows})
    candidates = result.report.candidates
    assert candidates["base=zero-shot"] < candidates["zero-shot"], candidates  # the linearization is lossy
    assert max(v for name, v in candidates.items() if name != "zero-shot") <= candidates["zero-shot"], candidates
    assert result.report.mode == "zero-shot" and result.head is None, result.report
    np.testing.assert_array_equal(result.scores, p0)
    assert "no head measured better" in result.report.note  # a tie keeps the scores as served
    pending = np.setdiff1d(np.arange(n), reviewed_rows)
    assert (result.scores[pending].argmax(1) == s["y"][pending]).mean() >= (p0[pending].argmax(1) == s["y"][pending]).mean()


@pytest.fixture(scope="module")
def cr_split(data_dir):
    """The customer-review sentences (dev task cr, 3,771, 36% negative), split as docs/adaptive.md does it
    (``simulate --holdout 0.3 --split-seed 0``), embedded and scored by the packaged MiniLM (embedding method)."""
    from annotate.simulate import read_labelled, split_rows
    from pool.scorers import LocalScorer

    path = data_dir / "classification/dev_tasks/cr/all.jsonl"
    if not path.is_file():
        pytest.skip(f"dev task cr not found at {path}")
    texts, gold = read_labelled(path, ["text"], "label")
    y = np.array([["negative", "positive"].index(g) for g in gold])
    pool, evaluation = split_rows(len(texts), holdout=0.3, seed=0)
    scorer = LocalScorer(["negative", "positive"], "The sentiment of this review is {}.", method="embedding",
                         batch_size=128)
    try:
        out = {}
        for name, rows in (("pool", pool), ("eval", evaluation)):
            part = [texts[i] for i in rows]
            out[name] = (scorer.embed(part).astype(np.float16).astype(np.float32), scorer.score(part), y[rows])
    finally:
        scorer.close()
    return out


@pytest.mark.slow
def test_em_prior_that_runs_the_wrong_way_is_caught_before_any_review(cr_split):
    """The issue's failure on a held-out binary sentiment task: EM on the self-trained head's probabilities moves the
    prior the wrong way (0.62 negative where the pool holds 0.36), the pseudo-labels follow it and the head relabels
    29% of the pool, just under the old 30% guard (on the Xeon it was measured on; 32% on an AVX2 EPYC, whose int8
    embeddings differ in the last bits), losing 3.5 points to zero-shot. The head alone, with no guard, reproduces it
    here; the current defaults stay within a point of zero-shot."""
    x, p0, y = cr_split["pool"]
    xe, p0e, ye = cr_split["eval"]
    labels = ["negative", "positive"]
    zero_shot = (p0e.argmax(1) == ye).mean()
    previous = HeadConfig(pool_weight=1.0, min_pseudo_precision=0.0, max_unreviewed_change=1.0,
                          bias_correction="none")  # the head alone, no guard
    before = adapt(x, p0, labels, config=previous)
    assert before.head is not None and before.report.prior[0] > 0.55 > (y == 0).mean() + 0.15, before.report
    assert before.report.changed_share > 0.25  # relabels about a third of the pool with no review
    assert (before.head.predict_proba(xe).argmax(1) == ye).mean() < zero_shot - 0.02
    now = adapt(x, p0, labels)
    served = now.head.predict_proba(xe) if now.head is not None else p0e
    assert (served.argmax(1) == ye).mean() >= zero_shot - 0.01, (now.report, zero_shot)
