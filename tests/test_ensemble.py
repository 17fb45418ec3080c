"""The ensemble: the weighted mean of log-probabilities, by hand, and the real two-model ensemble."""

import numpy as np
import pytest

from service.calibration import Calibration, softmax
from service.ensemble import combine, logit

P_NLI = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
P_EMB = np.array([[0.3, 0.5, 0.2], [0.2, 0.3, 0.5]])


def test_combine_is_a_tempered_weighted_mean_of_log_probabilities():
    calibration = Calibration(weight=0.25, temperature=0.5)
    expected = softmax((0.25 * np.log(P_NLI) + 0.75 * np.log(P_EMB)) / 0.5)
    np.testing.assert_allclose(combine(P_NLI, P_EMB, calibration, multi_label=False), expected, rtol=1e-12)


@pytest.mark.parametrize("weight, expected", [(1.0, P_NLI), (0.0, P_EMB)])
def test_weight_one_or_zero_gives_one_method(weight, expected):
    np.testing.assert_allclose(combine(P_NLI, P_EMB, Calibration(weight=weight), multi_label=False), expected,
                               rtol=1e-9)


def test_multi_label_combines_log_odds():
    calibration = Calibration(weight=0.5, binary_scale=2.0, binary_bias=-1.0)
    got = combine(P_NLI, P_EMB, calibration, multi_label=True)
    z = 0.5 * np.log(P_NLI / (1 - P_NLI)) + 0.5 * np.log(P_EMB / (1 - P_EMB))
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-(2.0 * z - 1.0))), rtol=1e-9)
    np.testing.assert_allclose(logit(np.array([0.5, 0.0, 1.0])), [0.0, -27.631, 27.631], atol=1e-3)  # clipped at 1e-12


@pytest.mark.slow
def test_the_served_ensemble_combines_the_two_served_methods(tiny_model_dir, minilm_dir, cache_dir):
    from service.config import Settings
    from service.loader import load_methods

    served = load_methods(Settings(model=str(tiny_model_dir), embedding_model=str(minilm_dir), method="ensemble",
                                   engine="onnxruntime", cache_dir=cache_dir))
    try:
        texts, labels = ["The striker scored twice.", "Shares fell sharply."], ["sports", "business", "politics"]
        methods = served.methods
        p_nli = methods["nli"].scores(texts, labels, hypothesis_template="About {}.")
        p_emb = methods["embedding"].scores(texts, labels, hypothesis_template="About {}.")
        got = methods["ensemble"].scores(texts, labels, hypothesis_template="About {}.")
        np.testing.assert_allclose(got, combine(p_nli, p_emb, methods["ensemble"].calibration, multi_label=False))
        assert served.model_id("ensemble") == f"{tiny_model_dir}+{minilm_dir}"
        assert set(served.info()["methods"]) == {"nli", "embedding", "ensemble"}
    finally:
        served.close()
