"""Bulk acceptance of pending suggestions at a stated precision: which records people may accept without looking.

The question: above which score may the pending suggestions of a label be accepted in bulk, so that their precision
(share of accepted suggestions that are right) is at least ``target`` (e.g. 0.95), with confidence ``confidence``
(e.g. 0.95)?

**Why a random sample of the candidate region, not the reviews already made.** Reviews taken lowest score first
are not a random sample of anything: least-confidence selection is deterministic, each record's inclusion
probability is 0 or 1, so Horvitz-Thompson reweighting (Horvitz & Thompson 1952) is undefined for the high-score
records one would accept (their inclusion probability is 0), and those reviews say almost nothing about them.
A threshold read off the head's own probabilities overstates precision (issue 22: at 300 reviews on AG News it
admits 82% of the pending records at a claimed 0.95 whose real precision is 0.91). The honest route is acceptance
sampling (ISO 2859-1 / ANSI Z1.4 practice; ISO 2859-2 for isolated lots): review a seeded uniform random sample of
the candidate region itself, and accept the region when a one-sided lower confidence bound on its precision
reaches the target. The sample's suggestions must not have been fitted on those records (callers keep sampled
records out of the head's training), otherwise the sample is an optimistic training-set estimate.

**Groups.** Each group is certified on its own: ``scope="label"`` makes one group per label (each label's precision
is promised), ``"pooled"`` one group of every label (only the union's precision is), and ``"auto"`` (the default of
``accept`` and ``simulate``) one group per label that has the records for a plan of its own, and one pooled group
:data:`POOLED` of the labels that do not (a label's plan needs a region of at least ``first_test`` times the
zero-defect sample, e.g. 118 sampled records, at the planned rate: a small label of a pool of hundreds, or a label
among many, has none). The promise still holds per group: the partition into groups is decided from the scores, the
lot and the planning estimate alone, before any sampled record's label is read, so each group is a fixed set of
records and its fixed-sequence test below controls its own error at ``1 - confidence`` exactly as a label's does
(the pooled group's promise is on the precision of its labels' accepted records together, not on each of them).

**The procedure** (in each group):

1. :func:`plan_certification`: in each group (the records whose suggestion is that label, among the ``lot`` of
   records that may be accepted or were sampled from it), candidate regions are the ``k`` highest-scoring records.
   A sampling rate is planned: ``n / k`` for the region size ``k`` and sample size ``n`` that maximise the expected
   number of accepted records, ``P(pass) * (k - n)``, where ``P(pass)`` is the probability that a sample of ``n``
   passes if the region's precision is the planning estimate (the operating characteristic of the attributes plan
   ``(n, Ac)``, ISO 2859-1; Schilling & Neubauer, "Acceptance Sampling in Quality Control"). The planning estimate
   comes from the caller (the head's probabilities, inflated); it decides only how many reviews are spent, never
   what is certified, so an optimistic estimate costs acceptance share, not validity. The sample is the group's
   lot records whose seeded uniform random number (``priority``) is below the rate: a uniform random sample of
   every region, reused by later calls (records already sampled stay sampled).
2. :func:`certify`: thresholds fixed before any sampled label is seen (the group's scores at every ``1/steps`` of
   its lot, from the highest one whose region holds enough sample) are tested from the highest down, each at
   level ``1 - confidence``: the region above a threshold passes when the one-sided Clopper-Pearson lower bound
   (Clopper & Pearson 1934; statsmodels ``proportion_confint(method="beta")``, or Wilson 1927) of its sampled
   records reaches ``target``. Testing stops at the first failure; the lowest passing threshold is chosen.
   Fixed-sequence testing (Bauer 1991, "Multiple testing in clinical trials", Stat. Med. 10; used for threshold
   selection by Angelopoulos, Bates, Candes, Jordan & Lei 2021, "Learn then Test") controls the family-wise error
   at ``1 - confidence``: the chosen region's precision is below ``target`` with probability at most
   ``1 - confidence``, per group (per label, not simultaneously over labels). Sampled records are reviewed lazily,
   region by region, as the tests go down: none is spent below the first failure.

The guarantee is on the precision of the whole region above the chosen threshold (sampled and accepted records);
the accepted records are the region minus the sample, which people reviewed. The bound is binomial, for a sample
drawn without replacement from a finite region: the usual, conservative approximation of the hypergeometric
(Hoeffding 1963, Thm. 4).

Pure numpy / scipy / statsmodels; the inputs are arrays over the pool's rows, so ``simulate`` and the Argilla side
share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

POOLED = "*"
"""The group name of a pooled certification (one threshold for every label)."""



def _check_level(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < 1.0 or math.isnan(value):
        raise ValueError(f"{name} must lie strictly between 0 and 1 (e.g. 0.95); got {value}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# Bounds and sample sizes
# ---------------------------------------------------------------------------------------------------------------
def lower_bound(correct, trials, confidence: float = 0.95, method: str = "beta") -> np.ndarray:
    """One-sided lower confidence bound on a precision from ``correct`` successes in ``trials`` sampled records.

    The two-sided interval of level ``2 * confidence - 1`` has the one-sided bound as its lower end (statsmodels
    ``proportion_confint``; ``method="beta"``: Clopper & Pearson 1934, exact; ``"wilson"``: Wilson 1927).

    Args:
        correct: successes, scalar or array of ints ``>= 0``.
        trials: sample sizes, same shape, ``>= correct``; ``0`` trials give a bound of ``0``.
        confidence: one-sided confidence in (0, 1).
        method: ``"beta"`` (Clopper-Pearson) or ``"wilson"``.

    Returns:
        Bounds in [0, 1], the broadcast shape of the inputs (a float64 array, 0-d for scalars).

    Raises:
        ValueError: confidence outside (0, 1), an unknown method, negative counts or ``correct > trials``.
    """
    from statsmodels.stats.proportion import proportion_confint

    confidence = _check_level("confidence", confidence)
    if method not in ("beta", "wilson"):
        raise ValueError(f"method must be 'beta' (Clopper-Pearson) or 'wilson'; got {method!r}")
    x, n = np.broadcast_arrays(np.asarray(correct, dtype=np.float64), np.asarray(trials, dtype=np.float64))
    if (x < 0).any() or (x > n).any():
        raise ValueError("counts must satisfy 0 <= correct <= trials")
    out = np.zeros(x.shape)
    ok = n > 0
    if ok.any():
        low, _ = proportion_confint(x[ok], n[ok], alpha=2 * (1 - confidence), method=method)
        out[ok] = np.nan_to_num(np.asarray(low, dtype=np.float64), nan=0.0)
    return out


def zero_defect_sample_size(target: float, confidence: float = 0.95) -> int:
    """Smallest sample that can certify ``target`` at all: all ``n`` sampled records correct and
    ``target ** n <= 1 - confidence``, i.e. ``n = ceil(ln(1 - confidence) / ln(target))`` (59 at 0.95 / 0.95; the
    "rule of three" family, Hanley & Lippman-Hand 1983).

    Raises:
        ValueError: target or confidence outside (0, 1).
    """
    target, confidence = _check_level("target", target), _check_level("confidence", confidence)
    return int(math.ceil(math.log(1 - confidence) / math.log(target) - 1e-12))


@lru_cache(maxsize=32)
def _acceptance_numbers(target: float, confidence: float, method: str, max_n: int) -> np.ndarray:
    """``ac[n]`` = the most wrong records a sample of ``n`` may hold and still certify ``target`` (``-1``: none)."""
    ns = np.arange(max_n + 1)
    ac = np.full(max_n + 1, -1, dtype=np.int64)
    max_d = int(math.ceil((1 - target) * max_n)) + 1
    for d in range(max_d + 1):
        passes = (ns >= d) & (lower_bound(np.maximum(ns - d, 0), ns, confidence, method) >= target)
        ac[passes] = d  # the bound falls as d grows, so the last d that passes is the acceptance number
    return ac


def acceptance_number(n: int, target: float = 0.95, confidence: float = 0.95, method: str = "beta") -> int:
    """The most wrong records a sample of ``n`` may contain for the region to be certified at ``target`` (the
    ``Ac`` of an attributes sampling plan ``(n, Ac)``, ISO 2859-1); ``-1`` when no outcome certifies it.

    Raises:
        ValueError: target or confidence outside (0, 1), ``n < 0``.
    """
    _check_level("target", target), _check_level("confidence", confidence)
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    return int(_acceptance_numbers(float(target), float(confidence), method, max(int(n), 64))[n])


def plan_sample_size(expected_precision: float, target: float = 0.95, confidence: float = 0.95, power: float = 0.8,
                     method: str = "beta", max_n: int = 4000) -> int | None:
    """Smallest sample size that certifies ``target`` with probability ``power`` when the region's precision is
    ``expected_precision``: the smallest ``n`` with ``P(Binomial(n, 1 - expected) <= Ac(n)) >= power``, where
    ``Ac(n)`` is :func:`acceptance_number` (a point of the plan's operating characteristic curve, ISO 2859-1).
    With ``expected_precision = 1`` this is :func:`zero_defect_sample_size`.

    Returns:
        ``n``, or ``None`` when no ``n <= max_n`` reaches ``power`` (expected precision at or under the target, or
        too close to it).

    Raises:
        ValueError: target, confidence or power outside (0, 1); expected precision outside [0, 1].
    """
    from scipy.stats import binom

    target, confidence = _check_level("target", target), _check_level("confidence", confidence)
    power = _check_level("power", power)
    if not 0.0 <= expected_precision <= 1.0:
        raise ValueError(f"expected_precision must lie in [0, 1]; got {expected_precision}")
    if expected_precision <= target:
        return None
    ac = _acceptance_numbers(target, confidence, method, int(max_n))
    ns = np.arange(len(ac))
    ok = ac >= 0
    reach = np.zeros(len(ac))
    reach[ok] = binom.cdf(ac[ok], ns[ok], 1 - expected_precision)
    hits = np.flatnonzero(reach >= power)
    return int(hits[0]) if len(hits) else None


def _efficient_sizes(target: float, confidence: float, method: str, max_n: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample sizes worth planning: for each acceptance number ``d``, the smallest ``n`` with ``Ac(n) = d`` (a
    larger ``n`` with the same ``Ac`` costs more reviews and passes less often). Returns ``(ns, acs)``."""
    ac = _acceptance_numbers(target, confidence, method, int(max_n))
    ok = np.flatnonzero(ac >= 0)
    first = ok[np.r_[True, np.diff(ac[ok]) > 0]]
    return first, ac[first]


def _best_plan(expected: np.ndarray, ks: np.ndarray, target: float, confidence: float,
               method: str, max_n: int, max_fraction: float) -> tuple[int, int, float] | None:
    """The region size ``k`` (among ``ks``) and sample size ``n`` maximising the expected number of records
    accepted, ``P(pass | n, expected[k]) * (k - n)`` (``P(pass)`` from the binomial operating characteristic,
    ISO 2859-1), with ``n <= max_fraction * k``. Returns ``(k, n, expected gain)`` or ``None``."""
    from scipy.stats import binom

    ns, acs = _efficient_sizes(target, confidence, method, max_n)
    live = np.flatnonzero(expected > target)
    if not len(live) or not len(ns):
        return None
    reach = binom.cdf(acs[None, :], ns[None, :], 1 - expected[live][:, None])  # (k's, n's)
    k = ks[live][:, None]
    gain = np.where(ns[None, :] <= max_fraction * k, reach * (k - ns[None, :]), -1.0)
    i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
    if gain[i, j] <= 0:
        return None
    return int(ks[live][i]), int(ns[j]), float(gain[i, j])


# ---------------------------------------------------------------------------------------------------------------
# Planning the certification sample
# ---------------------------------------------------------------------------------------------------------------
def sample_priority(n: int, seed: int = 0) -> np.ndarray:
    """A seeded uniform random number in [0, 1) per row, fixed for a session: a row belongs to a group's sample
    when its number is below the group's sampling rate (Bernoulli sampling), so the sample of any region is a
    uniform random sample of it, samples of nested regions are nested, and later calls reuse the rows already
    drawn."""
    return np.random.default_rng(seed).random(n)


@dataclass
class GroupPlan:
    """The certification plan of one group (a label, or :data:`POOLED`).

    Attributes:
        group: label name, or ``"*"`` for the pooled plan.
        rate: sampling rate: the group's lot rows whose priority is below it form the sample.
        labels: indices of the labels whose suggestions form the group.
        thresholds: the scores tested, highest first (fixed before any sampled label is seen): region ``j`` is
            the group's lot rows scoring at least ``thresholds[j]``.
        planned_region: region size the rate was planned for (``k*``).
        expected_precision: the planning estimate of that region's precision.
    """

    group: str
    rate: float
    thresholds: np.ndarray
    planned_region: int
    expected_precision: float
    labels: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return {"group": self.group, "rate": round(self.rate, 4), "planned_region": self.planned_region,
                "expected_precision": round(self.expected_precision, 4), "tests": len(self.thresholds),
                "labels": list(self.labels)}


@dataclass
class SamplePlan:
    """What :func:`plan_certification` returns; :func:`certify` says which sampled rows to review.

    Attributes:
        groups: ``{group: GroupPlan}`` (groups with nothing worth certifying are absent).
        priority: ``(n,)`` the session's random numbers (:func:`sample_priority`).
        target, confidence, method, scope: the settings planned for.
    """

    groups: dict[str, GroupPlan]
    priority: np.ndarray
    target: float
    confidence: float
    method: str
    scope: str

    def members(self, suggested: np.ndarray) -> dict[str, np.ndarray]:
        """``{group: (n,) bool}``: the rows whose suggestion belongs to each planned group."""
        suggested = np.asarray(suggested)
        return {name: np.isin(suggested, list(group.labels)) for name, group in self.groups.items()}

    def group_of(self, label: int) -> str | None:
        """The group holding suggestions of label index ``label`` (``None``: no plan covers it)."""
        return next((name for name, group in self.groups.items() if label in group.labels), None)


SCOPES = ("auto", "label", "pooled")


def _group_keys(suggested: np.ndarray, labels: list[str], scope: str) -> list[tuple[str, tuple[int, ...]]]:
    if scope == "pooled":
        return [(POOLED, tuple(range(len(labels))))]
    return [(label, (i,)) for i, label in enumerate(labels)]


def _validate(scores, suggested, lot, labels, target, confidence, scope):
    scores = np.asarray(scores, dtype=np.float64)
    suggested = np.asarray(suggested, dtype=np.int64)
    lot = np.asarray(lot, dtype=bool)
    if scores.ndim != 1 or suggested.shape != scores.shape or lot.shape != scores.shape:
        raise ValueError(f"scores {scores.shape}, suggested {suggested.shape} and lot {lot.shape} must be 1-d arrays "
                         "of the same length (one entry per pool row)")
    if len(suggested) and (suggested.min() < 0 or suggested.max() >= len(labels)):
        raise ValueError(f"suggested label indices must lie in [0, {len(labels)}) (one per label name)")
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'auto' (a threshold per label that has the records, one for the rest), "
                         f"'label' (one threshold per label) or 'pooled'; got {scope!r}")
    return scores, suggested, lot, _check_level("target", target), _check_level("confidence", confidence)


def plan_certification(scores, suggested, lot, labels, expected_correct, priority, *, target: float = 0.95,
                       confidence: float = 0.95, scope: str = "label", method: str = "beta", steps: int = 20,
                       first_test: float = 2.0, max_rate: float = 0.5, max_n: int = 4000) -> SamplePlan:
    """Plan each group's sampling rate and the thresholds to test (module docstring, 1.).

    Args:
        scores: ``(n,)`` score of each row's suggestion (its probability), higher = more confident.
        suggested: ``(n,)`` suggested label index per row.
        lot: ``(n,)`` bool, rows that may be accepted or sampled: pending rows and earlier sample rows, whose
            suggestions were not fitted on their reviews (rows reviewed in the loop and fitted on are excluded).
        labels: the ``K`` label names.
        expected_correct: ``(n,)`` planning estimate of each suggestion being right (e.g. the head's calibrated
            probability); only the sampling rate depends on it, never what is certified.
        priority: ``(n,)`` the session's random numbers (:func:`sample_priority`).
        target, confidence: the precision to certify and the confidence of the one-sided bound, in (0, 1).
        scope: ``"label"`` (one threshold per label, the default), ``"pooled"`` (one for all) or ``"auto"`` (one per
            label that has a plan of its own, one pooled group for the others; module docstring, "Groups").
        steps: thresholds are tested every ``1 / steps`` of the group's lot, from the first test down to its
            lowest score.
        first_test: the first (highest) threshold is the one whose region holds ``first_test`` times the
            zero-defect sample size in expectation (:func:`zero_defect_sample_size`; 2: 118 records at 0.95 / 0.95,
            which pass with up to 2 wrong).
        max_rate: never sample more than this share of a region.

    Returns:
        :class:`SamplePlan`; :func:`certify` with it says which rows to review.

    Raises:
        ValueError: shapes disagree, target / confidence outside (0, 1), an unknown scope, ``steps < 1``.
    """
    scores, suggested, lot, target, confidence = _validate(scores, suggested, lot, labels, target, confidence, scope)
    if steps < 1 or first_test <= 0 or not 0 < max_rate <= 1:
        raise ValueError("steps must be >= 1, first_test > 0 and max_rate in (0, 1]")
    expected = np.clip(np.asarray(expected_correct, dtype=np.float64), 0.0, 1.0)
    priority = np.asarray(priority, dtype=np.float64)
    if expected.shape != scores.shape or priority.shape != scores.shape:
        raise ValueError("expected_correct and priority must have one entry per pool row")
    first_n = first_test * zero_defect_sample_size(target, confidence)

    def plan_group(name: str, members: tuple[int, ...]) -> GroupPlan | None:
        rows = np.flatnonzero(np.isin(suggested, members) & lot)
        if not len(rows):
            return None
        rows = rows[np.argsort(-scores[rows], kind="stable")]  # the group's lot, most confident first
        running = np.cumsum(expected[rows]) / np.arange(1, len(rows) + 1)  # expected precision of the top k
        ks = np.unique(np.linspace(1, len(rows), min(len(rows), 200)).round().astype(np.int64))
        best = _best_plan(running[ks - 1], ks, target, confidence, method, max_n, max_rate)
        if best is None:
            return None
        k, size, _ = best
        rate = min(max_rate, size / k)
        start = int(math.ceil(first_n / rate))
        if start > len(rows):
            return None
        step = max(1, len(rows) // steps)
        positions = np.unique(np.r_[np.arange(start, len(rows) + 1, step), len(rows)])
        return GroupPlan(name, rate, scores[rows[positions - 1]], k, float(running[k - 1]), members)

    groups: dict[str, GroupPlan] = {}
    left: list[int] = []
    for name, members in _group_keys(suggested, list(labels), "pooled" if scope == "pooled" else "label"):
        planned = plan_group(name, members)
        if planned is not None:
            groups[name] = planned
        else:
            left += members
    if scope == "auto" and len(left) > 1:  # the labels without a plan of their own, certified together
        planned = plan_group(POOLED, tuple(left))
        if planned is not None:
            groups[POOLED] = planned
    return SamplePlan(groups, priority, target, confidence, method, scope)


# ---------------------------------------------------------------------------------------------------------------
# Certification
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class GroupCertification:
    """The outcome for one group.

    Attributes:
        group: label name or ``"*"``.
        threshold: the lowest certified score threshold (records of the group scoring at least this are accepted),
            ``None`` when no region passed.
        region_size: lot records at or above the threshold (0 when none passed).
        accepted: of which without a review (accepted without looking).
        rate: the sampling rate.
        tests: every test run, highest threshold first: ``{"threshold", "region", "sampled", "correct",
            "estimate", "lower_bound", "passed"}``.
        waiting: the test stopped for reviews (``requests``) rather than on a failure or the lot's end.
    """

    group: str
    threshold: float | None
    region_size: int
    accepted: int
    rate: float
    tests: list[dict] = field(default_factory=list)
    waiting: bool = False

    def to_dict(self) -> dict:
        return {"group": self.group, "threshold": self.threshold, "region_size": self.region_size,
                "accepted": self.accepted, "rate": round(self.rate, 4), "tests": self.tests}


@dataclass
class Certification:
    """What :func:`certify` returns.

    Attributes:
        accepted: ``(n,)`` bool, rows accepted without review (certified regions minus every reviewed row).
        groups: ``{group: GroupCertification}``.
        requests: rows to review before the next threshold can be tested (empty: certification is final).
        target, confidence, method, scope: the settings certified at.
    """

    accepted: np.ndarray
    groups: dict[str, GroupCertification]
    requests: np.ndarray
    target: float
    confidence: float
    method: str
    scope: str

    @property
    def thresholds(self) -> dict[str, float]:
        """``{label (or "*"): threshold}`` of every group that passed."""
        return {name: g.threshold for name, g in self.groups.items() if g.threshold is not None}

    def to_dict(self) -> dict:
        return {"target": self.target, "confidence": self.confidence, "method": self.method, "scope": self.scope,
                "accepted": int(self.accepted.sum()), "thresholds": self.thresholds,
                "requests": len(self.requests), "groups": {name: g.to_dict() for name, g in self.groups.items()}}


def certify(scores, suggested, lot, labels, plan: SamplePlan, correct) -> Certification:
    """Test each group's thresholds, highest first, on its sample, stopping at the first failure (module docstring,
    2.); accept the lot records of the lowest passing region that have no review.

    Sampling is lazy: the sample of the next region is requested only when every test above it passed, so
    reviews are spent only where they can still certify something. The sample itself is fixed in advance (the
    rows whose priority is below the rate), so this is exactly fixed-sequence testing on that sample. Call again
    after reviewing ``requests`` until they are empty.

    Args:
        scores, suggested, lot, labels: as given to :func:`plan_certification` (the same suggestions).
        plan: its result.
        correct: ``(n,)`` float: 1 where the row's suggestion equals its reviewer's label, 0 where it does not, NaN
            where the row has no review. Reviewed rows are never accepted.

    Returns:
        :class:`Certification`.

    Raises:
        ValueError: shapes disagree.
    """
    scores, suggested, lot, target, confidence = _validate(scores, suggested, lot, labels, plan.target,
                                                           plan.confidence, plan.scope)
    correct = np.asarray(correct, dtype=np.float64)
    if correct.shape != scores.shape:
        raise ValueError("correct must have one entry per pool row (NaN where there is no review)")
    accepted = np.zeros(len(scores), dtype=bool)
    groups: dict[str, GroupCertification] = {}
    requests = []
    members = plan.members(suggested)
    for name, group in plan.groups.items():
        rows = np.flatnonzero(members[name] & lot)
        in_sample = plan.priority[rows] < group.rate
        chosen, tests, waiting = None, [], False
        for threshold in group.thresholds:  # highest first
            inside = scores[rows] >= threshold
            sample = rows[inside & in_sample]
            missing = sample[np.isnan(correct[sample])]
            if len(missing):
                requests.append(missing)
                waiting = True
                break
            m, x = len(sample), int(correct[sample].sum())
            bound = float(lower_bound(x, m, confidence, plan.method))
            passed = m > 0 and bound >= target
            tests.append({"threshold": round(float(threshold), 6), "region": int(inside.sum()), "sampled": m,
                          "correct": x, "estimate": round(x / m, 4) if m else None, "lower_bound": round(bound, 4),
                          "passed": bool(passed)})
            if not passed:
                break  # fixed-sequence testing: stop at the first failure (Bauer 1991)
            chosen = float(threshold)
        if chosen is None:
            groups[name] = GroupCertification(name, None, 0, 0, group.rate, tests, waiting)
            continue
        region = rows[scores[rows] >= chosen]
        take = region[np.isnan(correct[region])]  # rows with a review (this sample or an earlier one) are not pending
        accepted[take] = True
        groups[name] = GroupCertification(name, chosen, len(region), len(take), group.rate, tests, waiting)
    requests_arr = np.unique(np.concatenate(requests)) if requests else np.empty(0, dtype=np.int64)
    return Certification(accepted, groups, requests_arr, target, confidence, plan.method, plan.scope)


def precision_above(scores, correct, thresholds, confidence: float = 0.95, method: str = "beta") -> list[dict]:
    """Precision of a random sample's suggestions above each threshold: estimate and one-sided lower bound.

    Only meaningful on a uniform random sample of the records concerned (an audit sample, or out-of-fold
    predictions of records drawn at random): see the module docstring for why least-confidence reviews are not.

    Args:
        scores: ``(m,)`` scores of the sampled records' suggestions.
        correct: ``(m,)`` bool, whether each suggestion was right.
        thresholds: scores to evaluate.

    Returns:
        ``[{"threshold", "sampled", "correct", "estimate", "lower_bound"}, ...]`` in the order of ``thresholds``.

    Raises:
        ValueError: no reviewed record (``m == 0``), shapes disagree, confidence outside (0, 1).
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if scores.ndim != 1 or correct.shape != scores.shape:
        raise ValueError("scores and correct must be 1-d arrays of the same length")
    if not len(scores):
        raise ValueError("no reviewed records: review a random sample of the candidate records first")
    out = []
    for t in np.asarray(thresholds, dtype=np.float64):
        inside = scores >= t
        m, x = int(inside.sum()), int(correct[inside].sum())
        out.append({"threshold": float(t), "sampled": m, "correct": x, "estimate": x / m if m else None,
                    "lower_bound": float(lower_bound(x, m, confidence, method))})
    return out
