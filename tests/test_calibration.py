"""Calibration: ECE by hand, fits that recover known parameters, storage keyed by model fingerprint."""

import numpy as np
import pytest

from service.calibration import (
    Calibration,
    calibration_key,
    embedded_calibration_dir,
    expected_calibration_error,
    find_calibration,
    fit_binary,
    fit_ensemble,
    fit_temperature,
    softmax,
)
from service.zeroshot import scores_from_logits


def test_ece_matches_a_hand_computation():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (wrong) -> bins [0.867, 0.933) and [0.533, 0.6], [0.6, 0.667)
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    gold = np.array([0, 1, 1, 1])
    # 0.9 bin: 2 records, accuracy 0.5, confidence 0.9 -> 2/4 * 0.4; 0.6 bin: accuracy 1, confidence 0.6 -> 1/4 * 0.4;
    # 0.55 bin: accuracy 0, confidence 0.55 -> 1/4 * 0.55
    assert expected_calibration_error(probabilities, gold) == pytest.approx(0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.55)
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0  # confidence 1 is binned


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(20_000, 4)) * 3
    true_t = 2.5
    gold = np.array([rng.choice(4, p=p) for p in softmax(raw / true_t)])
    fitted = fit_temperature([raw[:12_000], raw[12_000:, :3]], [gold[:12_000], np.argmax(softmax(raw[12_000:, :3]), 1)])
    assert 1.0 < fitted < true_t  # the second task is perfectly separable: pulls T down, but the first dominates
    assert fit_temperature([raw], [gold]) == pytest.approx(true_t, rel=0.05)


def test_fit_binary_recovers_platt_scale_and_bias():
    rng = np.random.default_rng(1)
    raw = rng.uniform(-0.2, 0.8, size=(30_000, 3))
    scale, bias = 9.0, -4.0
    positive = rng.uniform(size=raw.shape) < 1 / (1 + np.exp(-(scale * raw + bias)))
    # one-vs-rest data: keep rows with exactly one positive label, gold = that label
    keep = positive.sum(axis=1) == 1
    fitted_scale, fitted_bias = fit_binary([raw[keep]], [positive[keep].argmax(axis=1)])
    assert fitted_scale > 0 and fitted_bias < 0  # direction right; exact values differ: rows were selected


def test_fit_ensemble_weights_the_informative_method():
    rng = np.random.default_rng(2)
    gold = rng.integers(0, 4, size=3000)
    informative = softmax(np.eye(4)[gold] * 3 + rng.normal(size=(3000, 4)))
    noise = softmax(rng.normal(size=(3000, 4)))
    weight, temperature = fit_ensemble([informative], [noise], [gold])
    assert weight >= 0.9 and temperature > 0
    weight, _ = fit_ensemble([noise], [informative], [gold])
    assert weight <= 0.1


def test_nli_temperature_and_identity():
    logits = np.random.default_rng(3).normal(size=(2, 3, 3)) * 4
    identity = scores_from_logits(logits, entailment_id=2, contradiction_id=0, multi_label=False)
    np.testing.assert_allclose(identity, softmax(logits[..., 2]))
    scaled = scores_from_logits(logits, entailment_id=2, contradiction_id=0, multi_label=False,
                                calibration=Calibration(temperature=2.0))
    np.testing.assert_allclose(scaled, softmax(logits[..., 2] / 2.0))
    multi = scores_from_logits(logits, entailment_id=2, contradiction_id=0, multi_label=True,
                               calibration=Calibration(temperature=2.0))  # temperature only: pipeline's multi-label
    np.testing.assert_allclose(multi, softmax(logits[..., [0, 2]])[..., 1])


def test_calibrations_are_found_by_fingerprint_user_directory_first(tmp_path):
    key = calibration_key("embedding", "0123456789abcdef")
    assert key == "embedding-0123456789abcdef"
    assert find_calibration(key, tmp_path) is None
    (tmp_path / f"{key}.json").write_text(Calibration(temperature=0.07).to_json(method="embedding"))
    found, path = find_calibration(key, tmp_path)
    assert found.temperature == 0.07 and path.parent == tmp_path


def test_the_default_models_ship_their_calibrations(minilm_dir):
    from service.sources import PACKAGED_MINILM, resolve_model

    nli = resolve_model("default").fingerprint()
    embedding = resolve_model(PACKAGED_MINILM).fingerprint()
    for key in (calibration_key("nli", nli), calibration_key("embedding", embedding),
                calibration_key("ensemble", nli, embedding)):
        found = find_calibration(key)
        assert found is not None, f"{embedded_calibration_dir()}/{key}.json missing: run python -m train.calibrate"
        calibration, _ = found
        assert calibration.metrics["after"]["ece"] <= calibration.metrics["before"]["ece"]
        assert calibration.fitted_on["tasks"], "a calibration says what it was fitted on"
