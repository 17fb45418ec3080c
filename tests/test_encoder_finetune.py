"""annotate.encoder_finetune: a real fine-tune of the packaged MiniLM encoder on a real SST-2 slice, saved and
served through service.classify (ONNX Runtime). Nothing is mocked. Kept short (one bounded epoch, 32 tokens)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from annotate.encoder_finetune import FineTuned, FineTuneError, finetune_on_reviews, holdout_split

LABELS = ["negative", "positive"]


def _slice(path, n: int, seed: int):
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pick = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i]["text"] for i in pick], np.array([LABELS.index(rows[i]["label"]) for i in pick])


@pytest.fixture(scope="module")
def sst2(data_dir):
    folder = data_dir / "classification" / "sst2"
    if not (folder / "train.jsonl").is_file() or not (folder / "validation.jsonl").is_file():
        pytest.skip(f"SST-2 not found in {folder} (train.jsonl and validation.jsonl expected)")
    return _slice(folder / "train.jsonl", 200, 0), _slice(folder / "validation.jsonl", 200, 1)


@pytest.fixture(scope="module")
def tuned(sst2):
    (texts, y), _ = sst2
    return finetune_on_reviews(texts, y, LABELS, epochs=1.0, max_length=32, batch_size=16, lr=5e-5, seed=0,
                               time_budget_seconds=600, holdout_fraction=0.2)  # whole epoch: no load-dependent cut


def test_finetuned_beats_the_majority_class_and_is_served_with_the_same_scores(sst2, tuned, tmp_path, cache_dir):
    from service.classify import load_classifier

    (train_texts, y_train), (eval_texts, y_eval) = sst2
    assert tuned.history["steps_done"] >= 1 and tuned.history["objective"] == "hard"
    assert len(tuned.holdout_rows) == 40
    # the reported held-out accuracy is the model's own on exactly those rows, and better than their majority class
    held = np.asarray(tuned.holdout_rows)
    recomputed = float((tuned.predict_proba([train_texts[i] for i in held]).argmax(axis=1) == y_train[held]).mean())
    assert tuned.holdout_accuracy == pytest.approx(recomputed, abs=1 / 40 + 1e-9)
    assert tuned.holdout_accuracy > float(np.bincount(y_train[held]).max() / len(held)), tuned.holdout_accuracy
    out = tuned.save(tmp_path / "finetuned")
    classifier = load_classifier("sst2", str(out), engine="onnxruntime", cache_dir=cache_dir)
    try:
        assert classifier.labels == LABELS and not classifier.multi_label
        served = classifier.probabilities(eval_texts)  # the 200 held-out texts, as POST /classify scores them
    finally:
        classifier.close()
    majority = float((y_eval == np.bincount(y_train).argmax()).mean())
    accuracy = float((served.argmax(axis=1) == y_eval).mean())
    assert accuracy > majority + 0.1, (accuracy, majority)
    in_process = tuned.predict_proba(eval_texts[:16])
    np.testing.assert_allclose(in_process.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(served[:16], in_process, atol=1e-4)
    again = FineTuned.load(out)
    assert again.recipe == "lpft" and again.holdout_accuracy == tuned.holdout_accuracy
    np.testing.assert_allclose(again.predict_proba(eval_texts[:8]), in_process[:8], atol=1e-5)


def test_bad_input_is_refused_before_any_model_loads():
    with pytest.raises(FineTuneError, match="at least two"):
        finetune_on_reviews(["a", "b", "c"], [1, 1, 1], LABELS)
    with pytest.raises(FineTuneError, match="indices"):
        finetune_on_reviews(["a", "b"], [0, 2], LABELS)
    with pytest.raises(FineTuneError, match="2 reviewed texts but 3 labels"):
        finetune_on_reviews(["a", "b"], [0, 1, 1], LABELS)
    with pytest.raises(FineTuneError, match="pool_soft_labels has shape"):
        finetune_on_reviews(["a", "b"], [0, 1], LABELS, pool_texts=["c"], pool_soft_labels=np.ones((1, 3)))


def test_holdout_split_is_stratified_and_keeps_every_class_in_training():
    y = np.array([0] * 10 + [1] * 5 + [2])
    train, held = holdout_split(y, 0.2, seed=0)
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(16))
    assert np.bincount(y[held], minlength=3).tolist() == [2, 1, 0]
    assert set(y[train].tolist()) == {0, 1, 2}


def test_deadline_guard_stops_training_between_whole_steps():
    import time

    import torch

    from annotate.encoder_finetune import _BudgetSpent, _deadline_guard

    class Sum(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return (input_ids * attention_mask).float().sum(1, keepdim=True)

    ids = torch.ones((2, 3), dtype=torch.int64)
    guard = _deadline_guard()(Sum(), time.perf_counter() - 1.0).train()
    assert guard(ids, ids).shape == (2, 1)  # the first step always runs
    with pytest.raises(_BudgetSpent):
        guard(ids, ids)
    assert guard.steps == 1
    assert guard.eval()(ids, ids).shape == (2, 1)  # scoring is never stopped
