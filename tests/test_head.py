"""service/head.py: the adapted head's file format, its scoring, and its atomic save."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from service.calibration import sigmoid, softmax
from service.head import (
    HEAD_FILE,
    WEIGHTS_FILE,
    AdaptError,
    AdaptiveHead,
    OneVsRestHead,
    decide,
    is_head_dir,
    load_head,
)


def make_head(seed: int = 0, k: int = 3, d: int = 8, temperature: float = 1.7) -> AdaptiveHead:
    rng = np.random.default_rng(seed)
    return AdaptiveHead(["a", "b", "c"][:k], rng.normal(size=(k, d)), rng.normal(size=k), temperature,
                        encoder={"model_id": "m", "fingerprint": "f", "dim": d}, revision=f"rev{seed}" * 4,
                        meta={"mode": "reviews"})


def test_predict_proba_is_the_tempered_softmax_of_the_logits():
    head = make_head()
    x = np.random.default_rng(1).normal(size=(5, 8))
    expected = softmax((x @ head.coef.T + head.intercept) / head.temperature, axis=-1)
    assert np.allclose(head.predict_proba(x), expected)
    assert np.allclose(head.predict_proba(x).sum(axis=1), 1.0)
    with pytest.raises(AdaptError, match="dimension 8"):
        head.logits(np.zeros((2, 5)))


def test_save_and_load_round_trip_and_overwrite(tmp_path):
    first, second = make_head(0), make_head(1)
    target = first.save(tmp_path / "head")
    assert is_head_dir(target) and not is_head_dir(tmp_path)
    assert sorted(p.name for p in target.iterdir()) == sorted([HEAD_FILE, WEIGHTS_FILE])
    second.save(target)  # overwriting an existing head swaps the folder, leaving nothing beside it
    loaded = AdaptiveHead.load(target)
    assert loaded.revision == second.revision and loaded.meta == {"mode": "reviews"}
    assert np.allclose(loaded.coef, second.coef, atol=1e-6) and loaded.temperature == pytest.approx(1.7)
    assert [p.name for p in tmp_path.iterdir()] == ["head"]
    with pytest.raises(AdaptError, match="not a head directory"):
        AdaptiveHead.load(tmp_path)


def test_a_process_killed_mid_save_leaves_the_previous_head_whole(tmp_path):
    """A child process saves a new head and is killed (SIGKILL) inside the save, after the weights are written:
    the folder still holds the previous head, complete and loadable."""
    make_head(0).save(tmp_path / "head")
    script = f"""
import os, signal, numpy as np, sys
sys.path.insert(0, {os.getcwd()!r})
import service.head as h
original = np.savez
def savez_then_die(*args, **kwargs):
    original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
h.np.savez = savez_then_die
rng = np.random.default_rng(5)
h.AdaptiveHead(["a", "b", "c"], rng.normal(size=(3, 8)), rng.normal(size=3), revision="new").save({str(tmp_path / "head")!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    loaded = AdaptiveHead.load(tmp_path / "head")
    assert loaded.revision == make_head(0).revision
    assert json.loads((tmp_path / "head" / HEAD_FILE).read_text())["revision"] == loaded.revision


def test_one_vs_rest_head_scores_a_sigmoid_per_label_and_decides_per_threshold(tmp_path):
    rng = np.random.default_rng(2)
    head = OneVsRestHead(["a", "b", "c"], rng.normal(size=(3, 8)), rng.normal(size=3), [0.3, 0.5, 0.8],
                         encoder={"model_id": "m", "fingerprint": "f", "dim": 8}, revision="ovr" * 6,
                         meta={"sources": ["reviews", "zero-shot", "pseudo-labels"]})
    x = rng.normal(size=(6, 8))
    assert np.allclose(head.predict_proba(x), sigmoid(x @ head.coef.T + head.intercept))
    assert np.array_equal(head.decisions(x, at_least_one=False), head.predict_proba(x) >= [0.3, 0.5, 0.8])
    assert head.multi_label and not AdaptiveHead.multi_label and head.agent == "ovr-head:" + ("ovr" * 4)
    loaded = load_head(head.save(tmp_path / "ovr"))
    assert isinstance(loaded, OneVsRestHead) and loaded.thresholds.tolist() == [0.3, 0.5, 0.8]
    assert loaded.meta == {"sources": ["reviews", "zero-shot", "pseudo-labels"]}
    assert isinstance(load_head(make_head(0).save(tmp_path / "single")), AdaptiveHead)
    with pytest.raises(AdaptError, match="not a one-vs-rest head"):
        OneVsRestHead.load(tmp_path / "single")


def test_decide_thresholds_per_label_and_never_an_empty_suggestion():
    scores = np.array([[0.6, 0.9, 0.1], [0.1, 0.5, 0.3], [0.2, 0.1, 0.05]])
    t = np.array([0.55, 0.95, 0.35])
    assert decide(scores, t).tolist() == [[True, False, False], [False, False, True], [True, False, False]]
    assert decide(scores, t, at_least_one=False)[1:].sum() == 0
    assert decide(scores, 0.5)[2].tolist() == [True, False, False]  # one threshold: the top score
