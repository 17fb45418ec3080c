"""annotate.multilabel: pseudo-labels, thresholds, the one-vs-rest fit and its guard, save/load, and serving the head
through POST /classify.

Synthetic matrices check the arithmetic (the expected values follow from how they are built); real GoEmotions
texts (../shared/data) embedded by the packaged all-MiniLM-L6-v2 and served by the real service check the head end
to end. Nothing is mocked.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from annotate.multilabel import (
    MultiLabelConfig,
    MultiLabelSplit,
    adapt_multilabel,
    compare_suggestion,
    cross_fitted_f1,
    f1_threshold,
    pool_adaptation,
    review_sets,
    same_labels,
    select_pseudo_labels,
    simulate_multilabel,
    suggestion,
)
from service.head import AdaptError, AdaptiveHead, OneVsRestHead, decide, is_head_dir, load_head

from .conftest import LiveServer


def synthetic(n=700, d=24, k=3, noise=1.5, seed=0):
    """Embeddings whose label sets are linear in them, and zero-shot scores: a noisy, shrunk copy of the truth."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.normal(size=(k, d)) * 5
    truth = x @ w.T
    gold = (truth + 0.3 * rng.normal(size=truth.shape) > 1.0).astype(np.int64)
    zero_shot = 1 / (1 + np.exp(-(0.6 * truth + noise * rng.normal(size=truth.shape) - 0.6)))
    return x, zero_shot, gold


def reviews_of(gold, rows):
    return {int(r): tuple(np.flatnonzero(gold[r]).tolist()) for r in rows}


def test_pseudo_labels_are_the_confident_ends_in_proportion_to_prevalence():
    scores = np.array([[0.95, 0.1], [0.8, 0.2], [0.6, 0.3], [0.3, 0.7], [0.2, 0.9], [0.05, 0.4],
                       [0.1, 0.45], [0.4, 0.35], [0.45, 0.2], [0.15, 0.1]])
    picked = select_pseudo_labels(scores, fraction=0.5)
    rows, y = picked[0]  # label 0: 3 of 10 positive at 0.5 -> 2 positives (0.5*10*0.3), 4 negatives (0.5*10*0.7)
    assert rows[y == 1].tolist() == [0, 1] and rows[y == 0].tolist() == [5, 6, 9, 4]
    rows, y = picked[1]  # label 1: 2 of 10 positive -> 1 positive, 4 negatives
    assert rows[y == 1].tolist() == [4] and rows[y == 0].tolist() == [0, 9, 1, 8]  # ties: row order
    exclude = np.zeros(10, dtype=bool)
    exclude[[0, 5]] = True
    rows, y = select_pseudo_labels(scores, fraction=0.5, exclude=exclude)[0]
    assert 0 not in rows and 5 not in rows and rows[y == 1].tolist() == [1, 2]


def test_f1_threshold_and_its_cross_fitted_estimate():
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8])
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    assert f1_threshold(scores, y) == pytest.approx(0.35)  # 4 of 4 positives at precision 4/5: F1 0.889
    assert f1_threshold(scores, np.zeros(8, dtype=int)) == 0.5  # no positive: the 0.5 convention
    rng = np.random.default_rng(0)
    noise_scores, noise_y = rng.random(200), rng.integers(0, 2, 200)
    folds = np.arange(200) % 5
    in_sample = 2 * (noise_scores >= f1_threshold(noise_scores, noise_y)).astype(int)
    # on pure noise the in-sample optimum flatters; the cross-fitted estimate does not (it is the honest one)
    in_sample_f1 = np.sum((in_sample == 2) & (noise_y == 1)) * 2 / (np.sum(in_sample == 2) + noise_y.sum())
    assert cross_fitted_f1(noise_scores, noise_y, folds) <= in_sample_f1


def test_adapt_refuses_bad_input():
    with pytest.raises(AdaptError, match="matching embeddings"):
        adapt_multilabel(np.zeros((3, 4)), np.full((2, 2), 0.5), ["a", "b"])
    with pytest.raises(AdaptError, match="label index"):
        adapt_multilabel(np.zeros((2, 4)), np.full((2, 2), 0.5), ["a", "b"], reviewed={0: (3,)})
    with pytest.raises(AdaptError, match="probabilities"):
        adapt_multilabel(np.zeros((2, 4)), np.full((2, 2), 1.5), ["a", "b"])
    with pytest.raises(ValueError, match="'z' are not among"):
        review_sets({"r1": ["a", "z"]}, ["a", "b"])
    assert review_sets({"r1": ["b", "a"], "r2": None, "r3": "b"}, ["a", "b"]) == {"r1": (0, 1), "r2": (), "r3": (1,)}


def test_reviews_give_heads_that_beat_noisy_zero_shot_with_fitted_thresholds():
    x, p0, gold = synthetic()
    labels = ["a", "b", "c"]
    shared = pool_adaptation(x, p0)
    reviewed = reviews_of(gold, range(300))
    adapted = adapt_multilabel(x, p0, labels, reviewed=reviewed, pool=shared)
    assert adapted.head is not None and adapted.report.mode == "one-vs-rest"
    assert all(s != "zero-shot" for s in adapted.sources)
    for label in labels:
        info = adapted.report.labels[label]
        assert info["cv_f1"] > info["cv_f1_zero_shot"]  # measured out of fold, and the reason the head is used
    assert not np.allclose(adapted.thresholds, 0.5)  # fitted per label on out-of-fold scores
    rest = np.arange(300, len(gold))
    head_d = decide(adapted.scores[rest], adapted.thresholds, at_least_one=False)
    zero_d = decide(p0[rest], 0.5, at_least_one=False)
    f1 = lambda d: 2 * (d & (gold[rest] == 1)).sum() / (d.sum() + gold[rest].sum())  # noqa: E731  micro-F1
    assert f1(head_d) > f1(zero_d) + 0.05
    # deterministic: the same inputs give the same revision and scores
    again = adapt_multilabel(x, p0, labels, reviewed=reviewed, pool=shared)
    assert again.report.revision == adapted.report.revision and np.array_equal(again.scores, adapted.scores)
    assert adapt_multilabel(x, p0, labels, reviewed=reviews_of(gold, range(299)), pool=shared).report.revision \
        != adapted.report.revision


def test_the_guard_keeps_zero_shot_where_it_is_right_and_embeddings_know_nothing():
    """Embeddings of pure noise; reviewers agree with the zero-shot decisions: no head may replace them."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    p0 = rng.beta(0.6, 0.6, size=(500, 2))
    gold = (p0 >= 0.5).astype(np.int64)
    adapted = adapt_multilabel(x, p0, ["a", "b"], reviewed=reviews_of(gold, range(200)))
    assert adapted.sources == ["zero-shot", "zero-shot"] and adapted.head is None
    assert np.array_equal(adapted.scores, p0) and adapted.thresholds.tolist() == [0.5, 0.5]
    assert adapted.report.labels["a"]["cv_f1_zero_shot"] == 1.0
    # before reviews, the self-trained head of noise embeddings disagrees with the teacher too much: guarded
    zero = adapt_multilabel(x, p0, ["a", "b"])
    assert zero.head is None and all("guard" in zero.report.labels[lab]["note"] for lab in ("a", "b"))


def test_a_label_with_too_few_reviewed_positives_keeps_the_half_threshold():
    x, p0, gold = synthetic(seed=2)
    gold[:, 2] = 0
    gold[[0, 1, 2], 2] = 1  # 3 reviewed positives of "c": below min_label_reviews (5)
    adapted = adapt_multilabel(x, p0, ["a", "b", "c"], reviewed=reviews_of(gold, range(200)),
                               config=MultiLabelConfig(min_label_reviews=5))
    info = adapted.report.labels["c"]
    assert info["reviewed_positives"] == 3 and adapted.thresholds[2] == 0.5 and "cv_f1" not in info


def test_save_load_round_trip_is_atomic_and_typed(tmp_path):
    x, p0, gold = synthetic(seed=3)
    adapted = adapt_multilabel(x, p0, ["a", "b", "c"], reviewed=reviews_of(gold, range(250)),
                               encoder={"model_id": "m", "fingerprint": "f", "dim": x.shape[1]},
                               meta={"hypothesis_template": "It is about {}."})
    directory = adapted.head.save(tmp_path / "head")
    assert is_head_dir(directory) and sorted(p.name for p in tmp_path.iterdir()) == ["head"]  # no staging left
    saved = json.loads((directory / "head.json").read_text())
    assert saved["kind"] == "one-vs-rest-head" and saved["multi_label"] is True
    assert saved["sources"] == adapted.sources and saved["hypothesis_template"] == "It is about {}."
    loaded = load_head(directory)
    assert isinstance(loaded, OneVsRestHead) and loaded.revision == adapted.head.revision
    np.testing.assert_allclose(loaded.thresholds, adapted.thresholds)
    np.testing.assert_allclose(loaded.predict_proba(x), adapted.head.predict_proba(x), atol=1e-5)  # float32 weights
    with pytest.raises(AdaptError, match="not a single-label"):
        AdaptiveHead.load(directory)
    with pytest.raises(AdaptError, match="not a head directory"):
        load_head(tmp_path / "nothing")
    with pytest.raises(AdaptError, match="thresholds must lie in"):
        OneVsRestHead(["a"], np.zeros((1, 2)), np.zeros(1), [1.0])


def test_suggestions_and_their_comparison_for_refresh():
    value, score = suggestion(np.array([0.7, 0.2, 0.9]), ["a", "b", "c"], np.array([0.5, 0.5, 0.95]))
    assert value == ["a"] and score == [0.7]
    assert same_labels(["a", "b"], ["b", "a"]) and same_labels("a", ["a"]) and not same_labels(["a"], None)
    assert compare_suggestion(["a", "b"], [0.8, 0.6], ["b", "a"], [0.61, 0.79], 0.02) == (False, False)
    assert compare_suggestion(["a", "b"], [0.8, 0.6], ["b", "a"], [0.5, 0.79], 0.02) == (False, True)
    assert compare_suggestion(["a"], [0.8], ["b"], [0.8], 0.02)[0]


def test_simulate_multilabel_measures_micro_and_macro_f1_at_each_budget():
    x, p0, gold = synthetic(n=900, seed=4)
    pool, evaluation = MultiLabelSplit(x[:600], p0[:600], gold[:600]), MultiLabelSplit(x[600:], p0[600:], gold[600:])
    for strategy in ("random", "least-confidence"):
        report = simulate_multilabel(pool, ["a", "b", "c"], [0, 100, 200], strategy=strategy, round_size=50,
                                     evaluation=evaluation, progress=False)
        assert report["strategy"] == ("random" if strategy == "random" else "label-margin")
        curve = report["curve"]
        assert [e["reviewed"] for e in curve] == [0, 100, 200] and curve[0]["reviews_only"] is None
        assert curve[-1]["eval_micro_f1"] > report["zero_shot"]["micro_f1"]
        assert curve[-1]["eval_macro_f1"] > report["zero_shot"]["macro_f1"]
        assert set(curve[-1]["per_label"]) == {"a", "b", "c"} and curve[-1]["reviews_only"]["micro_f1"] > 0
    with pytest.raises(ValueError, match="budgets"):
        simulate_multilabel(pool, ["a", "b", "c"], [0, 601], progress=False)


# --- real texts, the real encoder, served through POST /classify ------------------------------------------------
EKMAN = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]


@pytest.fixture(scope="module")
def embedding_service(cache_dir):
    """The real service with the packaged sentence encoder only (POST /embed, its fingerprint)."""
    from service.app import create_app
    from service.config import Settings

    settings = Settings(model="none", embedding_model="default", engine="onnxruntime", cache_dir=cache_dir)
    with LiveServer(create_app(settings)) as live:
        assert live.wait_ready(300).status_code == 200
        yield live


@pytest.mark.slow
def test_a_multilabel_head_is_served_with_sigmoid_scores(embedding_service, data_dir, cache_dir, tmp_path):
    """An OvR head fitted on 400 GoEmotions texts (zero-shot: the embedding method's per-label scores, reviews:
    the gold Ekman sets of 200), saved, served by /classify: multi_label true, the in-process sigmoid scores (1e-4),
    the thresholds in /info."""
    from service.app import create_app
    from service.config import Settings

    rows = [json.loads(line) for line in
            (data_dir / "classification/dev_tasks/goemotions/test_part.jsonl").read_text().splitlines()[:400]]
    texts = [r["text"] for r in rows]
    gold = np.array([[int(label in r["ekman"]) for label in EKMAN] for r in rows])
    vectors, p0 = [], []
    for start in range(0, len(texts), 64):  # the service's ZSC_MAX_TEXTS
        chunk = texts[start:start + 64]
        embedded = httpx.post(embedding_service.url + "/embed", json={"texts": chunk}, timeout=300).json()
        scored = httpx.post(embedding_service.url + "/zero-shot", timeout=300,
                            json={"texts": chunk, "labels": EKMAN, "hypothesis_template": "This person feels {}.",
                                  "multi_label": True, "method": "embedding"}).json()
        vectors.extend(embedded["embeddings"])
        p0.extend([dict(zip(r["labels"], r["scores"]))[label] for label in EKMAN] for r in scored["results"])
    x, p0 = np.asarray(vectors, dtype=np.float32), np.asarray(p0)
    encoder = {"model_id": embedded["model"], "fingerprint": embedded["fingerprint"], "dim": embedded["dim"]}
    adapted = adapt_multilabel(x, p0, EKMAN, reviewed=reviews_of(gold, range(200)), encoder=encoder)
    assert adapted.head is not None, adapted.report.labels
    adapted.head.save(tmp_path / "ovr")
    probe = texts[200:216]
    want = load_head(tmp_path / "ovr").predict_proba(x[200:216])
    settings = Settings(model="none", embedding_model="default", engine="onnxruntime", cache_dir=cache_dir,
                        classifiers={"emotions": str(tmp_path / "ovr")})
    with LiveServer(create_app(settings)) as live:
        assert live.wait_ready(300).status_code == 200
        body = httpx.post(live.url + "/classify", json={"texts": probe, "model": "emotions"}, timeout=120).json()
        assert body["multi_label"] is True
        for row, result in zip(want, body["results"]):
            got = dict(zip(result["labels"], result["scores"]))
            np.testing.assert_allclose([got[label] for label in EKMAN], row, atol=1e-4)
        assert not np.allclose(want.sum(axis=1), 1.0)  # independent sigmoids, not a distribution
        info = httpx.get(live.url + "/info").json()["classifiers"]["emotions"]
        assert info["kind"] == "one-vs-rest-head" and info["multi_label"] is True
        assert info["thresholds"] == pytest.approx(dict(zip(EKMAN, adapted.thresholds.tolist())))
        assert info["sources"] == adapted.sources
