"""Score calibration: fitted temperatures and biases, stored with the model, and how they are measured.

Reviewers in Argilla work through records lowest score first, so a score should mean what it says:
of the suggestions scored 0.7, about 70% should be right. Each zero-shot method turns its raw
outputs into probabilities with a few fitted numbers (a :class:`Calibration`):

- single-label: ``softmax(raw / temperature)`` across the candidate labels - temperature scaling
  (Guo et al. 2017, "On Calibration of Modern Neural Networks", ICML);
- multi-label: ``sigmoid(binary_scale * raw + binary_bias)`` per label - Platt scaling (Platt 1999),
  fitted one-vs-rest.

``raw`` is the entailment logit (NLI), the cosine similarity (embedding), or the weighted mean of the
two methods' log-probabilities (ensemble). The identity calibration (temperature 1, scale 1, bias 0)
gives the NLI method exactly the scores of Hugging Face's zero-shot pipeline.

Calibrations are JSON files named ``<method>-<model fingerprint(s)>.json``: the embedded ones in
``service/models/calibrations/`` (fitted by ``python -m train.calibrate``), and a user's in
``ZSC_CALIBRATION_DIR``. The fingerprint is the model's content hash, so a calibration never applies
to weights it was not fitted on.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Package-relative directory of the calibrations shipped with the embedded models.
_EMBEDDED_DIR = "models/calibrations"
#: Bins of the expected calibration error, as in Guo et al. (2017).
ECE_BINS = 15


@dataclass(frozen=True)
class Calibration:
    """Fitted numbers that turn a method's raw outputs into probabilities (see the module docstring).

    Attributes:
        temperature: single-label softmax temperature (> 0; 1 = uncalibrated).
        binary_scale, binary_bias: multi-label sigmoid slope and offset (1 and 0 = uncalibrated).
        weight: ensemble only: weight of the NLI log-probabilities (the embedding's is ``1 - weight``).
        fitted_on: what the numbers were fitted on (files, templates, counts), for ``/info``.
        metrics: ECE / NLL on the calibration set before and after fitting.
    """

    temperature: float = 1.0
    binary_scale: float = 1.0
    binary_bias: float = 0.0
    weight: float = 0.5
    fitted_on: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def is_identity(self) -> bool:
        return self.temperature == 1.0 and self.binary_scale == 1.0 and self.binary_bias == 0.0

    def to_json(self, **extra) -> str:
        return json.dumps({**dataclasses.asdict(self), **extra}, indent=2) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> "Calibration":
        data = json.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


IDENTITY = Calibration()


def calibration_key(method: str, *fingerprints: str) -> str:
    """File stem of a calibration: ``nli-<fp>``, ``embedding-<fp>`` or ``ensemble-<nli fp>-<embedding fp>``."""
    return "-".join((method, *fingerprints))


def embedded_calibration_dir() -> Path:
    """``service/models/calibrations`` inside the installed package."""
    return Path(str(importlib.resources.files("service").joinpath(_EMBEDDED_DIR)))


def find_calibration(key: str, user_dir: Path | None = None) -> tuple[Calibration, Path] | None:
    """The calibration named ``key`` from ``user_dir`` (first) or the embedded directory; ``None`` if absent."""
    for directory in (user_dir, embedded_calibration_dir()):
        if directory is not None and (Path(directory) / f"{key}.json").is_file():
            path = Path(directory) / f"{key}.json"
            return Calibration.from_file(path), path
    return None


# --- measuring --------------------------------------------------------------------------------------


def expected_calibration_error(probabilities: np.ndarray, gold: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error (Guo et al. 2017, eq. 3), equal-width bins over [0, 1].

    Args:
        probabilities: ``(n, k)`` scores of each candidate label.
        gold: ``(n,)`` index of the correct label.

    Returns:
        ``sum_b |B_b|/n * |accuracy(B_b) - mean confidence(B_b)|``, in [0, 1].
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(gold)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)  # a confidence of 1.0 goes to the last bin
    ece = 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def negative_log_likelihood(probabilities: np.ndarray, gold: np.ndarray) -> float:
    """Mean ``-log p(gold)`` of ``(n, k)`` probabilities (nats)."""
    p = np.asarray(probabilities, dtype=np.float64)[np.arange(len(gold)), np.asarray(gold)]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function in float64."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


# --- fitting ----------------------------------------------------------------------------------------


def fit_temperature(raw: list[np.ndarray], gold: list[np.ndarray]) -> float:
    """Temperature minimising the NLL of ``softmax(raw / T)`` (Guo et al. 2017, section 4.2).

    Args:
        raw: one ``(n_i, k_i)`` array per calibration task (tasks may have different label counts).
        gold: one ``(n_i,)`` array of correct label indices per task.

    Returns:
        ``T`` in [1e-3, 1e3], found by bounded scalar minimisation over ``log T`` (scipy).
    """
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        t = np.exp(log_t)
        total = sum(negative_log_likelihood(softmax(r / t), g) * len(g) for r, g in zip(raw, gold))
        return total / sum(len(g) for g in gold)

    result = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1e3)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def transfer_temperature(reference: list[np.ndarray], raw: list[np.ndarray]) -> float:
    """Temperature of a new model's ``softmax(raw / T)`` fitted to a calibrated reference's probabilities on the
    same (text, label) pairs, with no gold label: the ``T`` minimising the mean KL divergence from the reference's
    distributions (the soft targets of Hinton et al. 2015's distillation, here fitting only a temperature). The new
    model inherits the reference's calibration to the extent the two rank alike; its own ranking is untouched.

    Args:
        reference: one ``(n_i, k_i)`` array of the reference's calibrated probabilities per task.
        raw: the new model's raw scores (cosines) of the same pairs, same shapes.

    Returns:
        ``T`` in [1e-3, 1e3] (bounded scalar minimisation over ``log T``, scipy).
    """
    from scipy.optimize import minimize_scalar

    def kl(log_t: float) -> float:
        t = np.exp(log_t)
        total = 0.0
        for p, r in zip(reference, raw):
            q = np.clip(softmax(r / t), 1e-12, 1.0)
            total += float((p * (np.log(np.clip(p, 1e-12, 1.0)) - np.log(q))).sum())
        return total / sum(len(p) for p in reference)

    result = minimize_scalar(kl, bounds=(np.log(1e-3), np.log(1e3)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def supported_temperature(raw: np.ndarray, gold: np.ndarray, confidence_level: float = 0.95,
                          bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature of ``softmax(raw / T)`` fitted on few held-out predictions without sharpening past what they
    support.

    The NLL fit (:func:`fit_temperature`, Guo et al. 2017) is kept when it softens (``T >= 1``). When it sharpens
    (``T < 1``), it may sharpen only while the predictions' mean top-label confidence stays at or below the lower
    end of the Wilson interval (Wilson 1927; ``scipy.stats.binomtest(...).proportion_ci``) of their accuracy: ten
    correct predictions out of ten support a mean confidence of 0.72 at the 95% level, not the 0.99 an NLL fit
    reaches on them; a thousand support nearly their accuracy. ``T`` is then the smallest temperature in
    ``[T_nll, 1]`` meeting that bound (the mean confidence falls as ``T`` grows), or 1 when none does.

    Args:
        raw: ``(n, k)`` logits of held-out (e.g. out-of-fold) predictions.
        gold: ``(n,)`` correct label indices.
        confidence_level: of the Wilson interval.
        bounds: ``T`` is clipped to this range.

    Returns:
        ``T``; 1.0 when ``n < 10`` (too few to fit anything).
    """
    from scipy.optimize import brentq
    from scipy.stats import binomtest

    raw, gold = np.asarray(raw, dtype=np.float64), np.asarray(gold)
    if len(gold) < 10:
        return 1.0
    t_nll = float(np.clip(fit_temperature([raw], [gold]), *bounds))
    if t_nll >= 1.0:
        return t_nll
    correct = int((raw.argmax(axis=1) == gold).sum())
    ceiling = binomtest(correct, len(gold)).proportion_ci(confidence_level=confidence_level, method="wilson").low

    def excess(log_t: float) -> float:
        return float(softmax(raw / np.exp(log_t)).max(axis=1).mean() - ceiling)

    if excess(np.log(t_nll)) <= 0:
        return t_nll
    if excess(0.0) > 0:
        return 1.0
    return float(np.exp(brentq(excess, np.log(t_nll), 0.0, xtol=1e-4)))


def fit_binary(raw: list[np.ndarray], gold: list[np.ndarray]) -> tuple[float, float]:
    """Platt scaling, one-vs-rest: ``(scale, bias)`` of ``sigmoid(scale * raw + bias)``.

    Every (text, candidate label) value is one example, positive for the gold label. Fitted with
    scikit-learn's unregularised logistic regression on the 1-D raw value.
    """
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([r.reshape(-1) for r in raw]).reshape(-1, 1)
    y = np.concatenate([np.eye(r.shape[1], dtype=int)[g].reshape(-1) for r, g in zip(raw, gold)])
    model = LogisticRegression(C=1e6, max_iter=1000).fit(x, y)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def ensemble_logits(log_p_nli: np.ndarray, log_p_embedding: np.ndarray, weight: float) -> np.ndarray:
    """Weighted mean of the two methods' log-probabilities: ``w * log p_nli + (1 - w) * log p_emb``."""
    return weight * np.asarray(log_p_nli, dtype=np.float64) + (1 - weight) * np.asarray(log_p_embedding, dtype=np.float64)


def fit_ensemble(p_nli: list[np.ndarray], p_embedding: list[np.ndarray], gold: list[np.ndarray],
                 weights: np.ndarray | None = None) -> tuple[float, float]:
    """Ensemble weight and temperature minimising NLL: a grid over ``w`` (0 to 1 by 0.05), each with
    its own fitted temperature (:func:`fit_temperature`).

    Args:
        p_nli, p_embedding: per task, ``(n_i, k_i)`` calibrated single-label probabilities.
        gold: per task, ``(n_i,)`` correct label indices.

    Returns:
        ``(weight, temperature)``.
    """
    weights = np.linspace(0, 1, 21) if weights is None else weights
    best = (np.inf, 0.5, 1.0)
    for w in weights:
        raw = [ensemble_logits(np.log(np.clip(a, 1e-12, None)), np.log(np.clip(b, 1e-12, None)), w)
               for a, b in zip(p_nli, p_embedding)]
        t = fit_temperature(raw, gold)
        nll = sum(negative_log_likelihood(softmax(r / t), g) * len(g) for r, g in zip(raw, gold))
        if nll < best[0]:
            best = (nll, float(w), t)
    return best[1], best[2]
