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
    supported_temperature,
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


def test_a_temperature_fitted_on_few_points_is_not_sharper_than_they_support():
    """Ten out-of-fold predictions, all right: the NLL fit sharpens them to near certainty (T at its floor); ten
    successes support a mean confidence of at most the Wilson 95% lower bound, 0.722 (Wilson 1927)."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 10)
    logits = rng.normal(scale=0.3, size=(10, 3))
    logits[np.arange(10), gold] += 1.0  # every top label right, with modest logits
    unbounded = fit_temperature([logits], [gold])
    assert unbounded < 0.1 and softmax(logits / unbounded).max(1).mean() > 0.99
    t = supported_temperature(logits, gold)
    bound = binomtest(10, 10).proportion_ci(confidence_level=0.95, method="wilson").low
    assert bound == pytest.approx(0.7225, abs=1e-3)
    assert t > unbounded and softmax(logits / t).max(1).mean() == pytest.approx(bound, abs=2e-3)
    # many points: the support is close to the accuracy, so the fit is hardly held back
    gold_many = rng.integers(0, 3, 2000)
    raw = rng.normal(size=(2000, 3))
    raw[np.arange(2000), gold_many] += 1.5
    t_many = supported_temperature(0.5 * raw, gold_many)  # logits half as sharp as the labels: the fit sharpens
    t_fit = fit_temperature([0.5 * raw], [gold_many])
    assert t_fit < 0.7 and t_fit <= t_many < 1.15 * t_fit  # held back by the 2-point width of the interval only
    accuracy = (raw.argmax(1) == gold_many).mean()
    assert abs(softmax(0.5 * raw / t_many).max(1).mean() - accuracy) < 0.03
    # a fit that softens is kept, and fewer than ten points fit nothing
    assert supported_temperature(3 * raw, gold_many) == pytest.approx(fit_temperature([3 * raw], [gold_many]),
                                                                      rel=1e-6)
    assert supported_temperature(logits[:9], gold[:9]) == 1.0


def test_transfer_temperature_recovers_the_reference_temperature_without_labels():
    from service.calibration import softmax, transfer_temperature

    rng = np.random.default_rng(0)
    raws = [rng.normal(scale=0.2, size=(200, 4)), rng.normal(scale=0.2, size=(150, 6))]
    references = [softmax(r / 0.05) for r in raws]  # a reference that is the same model at T = 0.05
    assert transfer_temperature(references, raws) == pytest.approx(0.05, rel=1e-3)


@pytest.mark.slow
def test_an_encoder_without_a_calibration_gets_one_transferred_once(tiny_model_dir, tmp_path):
    """A sentence encoder that ships no calibration (a 2-layer random BERT, mean-pooled) gets its temperature from
    the packaged encoder's calibrated probabilities on the reference tasks; it is saved and reused."""
    from service.config import Settings
    from service.loader import load_model

    settings = Settings(model="none", embedding_model=str(tiny_model_dir), method="embedding", engine="onnxruntime",
                        cache_dir=tmp_path, quantization="none")
    first = load_model(settings, role="embedding")
    try:
        info = first.info["calibration"]
        assert info["transferred_from"].startswith("packaged:") and info["temperature"] != 1.0
        assert (tmp_path / "calibrations").is_dir() and info["file"].startswith(str(tmp_path / "calibrations"))
        probabilities = first.classifier.scores(["A goal in the last minute."], ["sports", "business"],
                                                hypothesis_template="This text is about {}.")
        np.testing.assert_allclose(probabilities.sum(), 1.0)
    finally:
        first.close()
    again = load_model(settings, role="embedding")
    try:
        assert again.info["calibration"]["file"] == info["file"] and "transferred_from" not in again.info["calibration"]
        assert again.classifier.calibration.temperature == pytest.approx(info["temperature"])
    finally:
        again.close()
