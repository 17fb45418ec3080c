"""annotate/acceptance.py: bounds against scipy's beta quantiles, sample sizes against the zero-defect formula, and
the whole rule on synthetic pools whose precision is known, over many seeds: its promise (precision >= target at
the chosen threshold) is broken in at most 1 - confidence of the runs (plus binomial slack), where a rule reading
the point estimate breaks it far more often."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, binom

from annotate.acceptance import (
    POOLED,
    acceptance_number,
    certify,
    lower_bound,
    plan_certification,
    plan_sample_size,
    precision_above,
    sample_priority,
    zero_defect_sample_size,
)

TARGET, CONFIDENCE = 0.95, 0.95


def test_clopper_pearson_bound_is_the_beta_quantile():
    # one-sided Clopper-Pearson lower bound = Beta(x, n - x + 1) quantile at 1 - confidence (Clopper & Pearson 1934)
    for x, n in [(59, 59), (92, 93), (120, 124), (3, 10)]:
        assert float(lower_bound(x, n)) == pytest.approx(beta.ppf(0.05, x, n - x + 1), abs=1e-9)
    assert float(lower_bound(0, 0)) == 0.0
    assert float(lower_bound(10, 10, method="wilson")) > float(lower_bound(10, 10))  # Wilson is less conservative


def test_sample_sizes():
    assert zero_defect_sample_size(0.95, 0.95) == 59  # ln(0.05) / ln(0.95) = 58.4
    assert zero_defect_sample_size(0.99, 0.95) == 299
    assert acceptance_number(58) == -1 and acceptance_number(59) == 0
    assert float(lower_bound(93 - acceptance_number(93), 93)) >= TARGET
    assert float(lower_bound(93 - acceptance_number(93) - 1, 93)) < TARGET
    assert plan_sample_size(1.0) == 59
    n = plan_sample_size(0.98, power=0.8)
    assert binom.cdf(acceptance_number(n), n, 0.02) >= 0.8
    assert all(binom.cdf(acceptance_number(m), m, 0.02) < 0.8 for m in range(59, n))
    assert plan_sample_size(0.95) is None and plan_sample_size(0.9) is None
    assert plan_sample_size(0.99) < plan_sample_size(0.98) < plan_sample_size(0.97)


@pytest.mark.parametrize("call", [
    lambda: zero_defect_sample_size(1.0),
    lambda: zero_defect_sample_size(0.0),
    lambda: lower_bound(1, 2, confidence=1.5),
    lambda: plan_sample_size(0.99, target=1.2),
    lambda: plan_certification([0.9], [0], [True], ["a"], [0.9], [0.5], target=0.0),
    lambda: precision_above([], [], [0.5]),
    lambda: lower_bound(3, 2),
])
def test_bad_input_raises_a_clear_value_error(call):
    with pytest.raises(ValueError, match=r"between 0 and 1|no reviewed records|0 <= correct <= trials"):
        call()


def _pool(rng, n=3000, k=2, floor=0.80):
    """Scores uniform in (0, 1); a suggestion with score s is right with probability floor + (1 - floor) * s**0.5,
    so the precision of the records above a threshold crosses 0.95 inside the pool."""
    scores = rng.uniform(size=n)
    suggested = rng.integers(0, k, n)
    p_right = floor + (1 - floor) * np.sqrt(scores)
    right = rng.uniform(size=n) < p_right
    return scores, suggested, right, p_right


def _certify(scores, suggested, lot, labels, plan, right, correct=None):
    """certify, reviewing what it requests (the reviewer's label is the gold one), until it requests nothing."""
    correct = np.full(len(scores), np.nan) if correct is None else correct
    while True:
        result = certify(scores, suggested, lot, labels, plan, correct)
        if not len(result.requests):
            return result, correct
        correct[result.requests] = right[result.requests]


def _run(seed, *, scope="label", optimism=0.0, floor=0.80, rule="bound"):
    rng = np.random.default_rng(seed)
    scores, suggested, right, p_right = _pool(rng, floor=floor)
    n = len(scores)
    labels = ["a", "b"]
    lot = np.ones(n, dtype=bool)
    plan = plan_certification(scores, suggested, lot, labels, np.clip(p_right + optimism, 0, 1),
                              sample_priority(n, seed + 10_000), target=TARGET, confidence=CONFIDENCE, scope=scope, max_n=1500)
    if rule == "estimate":  # the point estimate instead of the bound: what the module must not do
        plan.confidence = 0.5 + 1e-9
    result, _ = _certify(scores, suggested, lot, labels, plan, right)
    broken = {}
    for name, group in result.groups.items():
        if group.threshold is None:
            continue
        member = np.ones(n, dtype=bool) if name == POOLED else suggested == labels.index(name)
        region = member & (scores >= group.threshold)
        broken[name] = right[region].mean() < TARGET
    # the best possible share: the largest region per label whose real precision reaches the target
    oracle = 0
    for c in range(2):
        rows = np.flatnonzero(suggested == c)
        rows = rows[np.argsort(-scores[rows])]
        ok = np.flatnonzero(np.cumsum(right[rows]) / np.arange(1, len(rows) + 1) >= TARGET)
        oracle += ok[-1] + 1 if len(ok) else 0
    return broken, int(result.accepted.sum()), oracle, result, right


SEEDS = 500
# at most 1 - confidence of runs may break the promise; allow 3 binomial standard deviations over 500 runs
SLACK = 3 * math.sqrt(0.05 * 0.95 / SEEDS)


@pytest.mark.parametrize("scope,optimism", [("label", 0.0), ("label", 0.05), ("pooled", 0.0), ("pooled", 0.05)])
def test_promise_is_kept_in_at_least_confidence_of_runs(scope, optimism):
    groups = ["a", "b"] if scope == "label" else [POOLED]
    broken = {g: 0 for g in groups}
    accepted, oracle, certified = [], [], 0
    for seed in range(SEEDS):
        result, acc, best, cert, right = _run(seed, scope=scope, optimism=optimism)
        for g, b in result.items():
            broken[g] += b
        certified += bool(result)
        accepted.append(acc)
        oracle.append(best)
        if acc:
            assert right[cert.accepted].mean() > 0.9
    for g in groups:
        print(scope, optimism, g, "broken in", broken[g], "of", SEEDS)
        assert broken[g] / SEEDS <= 1 - CONFIDENCE + SLACK, (g, broken[g])
    # a sensible share: most runs certify something, and a fair part of the best possible share (known gold, no
    # review spent). Certification costs reviews near the target: here the samples take about as many records as
    # are accepted (measured 590-650 accepted of ~2,470 with ~520 reviews, seeds 0-99).
    assert certified / SEEDS > 0.5  # an optimistic plan samples too little more often (0.05: 60% of runs)
    assert 0.15 < np.mean(accepted) / np.mean(oracle) < 1.0


def test_a_rule_on_the_point_estimate_breaks_the_promise_often():
    # the same plans (optimistic by 0.05, so regions near the target get tested) certified at confidence 0.5, i.e.
    # the sample's point estimate against the target: broken in 80 of 200 runs (the bound: 2 of 200)
    broken = sum(any(_run(seed, optimism=0.05, rule="estimate")[0].values()) for seed in range(200))
    assert broken / 200 > 0.2


def test_nothing_is_accepted_when_every_region_is_below_the_target():
    # right with probability 0.9 everywhere: no region reaches 0.95
    rng = np.random.default_rng(3)
    n = 2000
    scores, suggested = rng.uniform(size=n), rng.integers(0, 2, n)
    right = rng.uniform(size=n) < 0.9
    lot = np.ones(n, dtype=bool)
    # an over-optimistic planning estimate (0.99) makes it sample; the bound still refuses, after one failed test
    plan = plan_certification(scores, suggested, lot, ["a", "b"], np.full(n, 0.99), sample_priority(n, 10_003))
    result, correct = _certify(scores, suggested, lot, ["a", "b"], plan, right)
    assert not result.accepted.any() and result.thresholds == {}
    assert all(len(g.tests) == 1 and not g.tests[0]["passed"] for g in result.groups.values())
    assert 100 < (~np.isnan(correct)).sum() < 400  # only the first region's sample was reviewed
    # an honest estimate (0.9) plans no sample at all
    assert plan_certification(scores, suggested, lot, ["a", "b"], np.full(n, 0.9), sample_priority(n)).groups == {}


def test_samples_are_reused_and_reviewed_rows_never_accepted():
    rng = np.random.default_rng(5)
    scores, suggested, right, p_right = _pool(rng, floor=0.9)
    n = len(scores)
    lot = np.ones(n, dtype=bool)
    priority = sample_priority(n, 10_005)
    plan = plan_certification(scores, suggested, lot, ["a", "b"], p_right, priority)
    first = certify(scores, suggested, lot, ["a", "b"], plan, np.full(n, np.nan))
    assert len(first.requests) and not first.accepted.any()  # nothing is certified before the sample is reviewed
    result, correct = _certify(scores, suggested, lot, ["a", "b"], plan, right)
    reviewed = ~np.isnan(correct)
    assert result.accepted.any() and not (result.accepted & reviewed).any()
    # every reviewed row is a sampled row (priority below its group's rate)
    rates = np.array([plan.groups[name].rate for name in ("a", "b")])[suggested]
    assert (priority[reviewed] < rates[reviewed]).all()
    # a second session with the same priority and reviews requests nothing new
    again = certify(scores, suggested, lot, ["a", "b"], plan, correct)
    assert len(again.requests) == 0 and (again.accepted == result.accepted).all()
    as_dict = result.to_dict()
    assert set(as_dict["thresholds"]) <= {"a", "b"} and as_dict["accepted"] == int(result.accepted.sum())
    tests = as_dict["groups"]["a"]["tests"]
    assert [t["threshold"] for t in tests] == sorted((t["threshold"] for t in tests), reverse=True)
    assert all(t["passed"] for t in tests[:-1])


def test_precision_above():
    rows = precision_above([0.9, 0.8, 0.7, 0.6], [True, True, False, True], [0.75, 0.5])
    assert [(r["sampled"], r["correct"]) for r in rows] == [(2, 2), (4, 3)]
    assert rows[0]["lower_bound"] == pytest.approx(beta.ppf(0.05, 2, 1))


def _many_labels(seed, n=2000, k=12):
    """The issue's case: a pool of 2,000 records over 12 labels of uneven size, suggestions about 0.95 accurate
    (higher the higher the score)."""
    rng = np.random.default_rng(seed)
    weights = np.linspace(3, 1, k)
    suggested = rng.choice(k, size=n, p=weights / weights.sum())
    scores = rng.uniform(0.5, 1.0, size=n)
    p_right = 0.90 + 0.09 * (scores - 0.5) / 0.5
    right = rng.uniform(size=n) < p_right
    return scores, suggested, right, p_right


def test_auto_scope_certifies_labels_too_small_for_a_plan_of_their_own_together():
    """Per label, no label of a 2,000-record, 12-label pool has the records for a sample of its own; ``auto`` certifies
    them as one pooled group (the labels without a plan), each group its own fixed-sequence test."""
    labels = [f"l{i}" for i in range(12)]
    scores, suggested, right, p_right = _many_labels(0)
    lot = np.ones(len(scores), dtype=bool)
    priority = sample_priority(len(scores), 1)
    per_label = plan_certification(scores, suggested, lot, labels, p_right, priority, scope="label")
    auto = plan_certification(scores, suggested, lot, labels, p_right, priority, scope="auto")
    assert len(per_label.groups) < len(labels)  # some labels have no plan of their own
    assert POOLED in auto.groups
    pooled = set(auto.groups[POOLED].labels)
    assert pooled == {i for i, name in enumerate(labels) if name not in per_label.groups}
    assert all(auto.group_of(i) == (POOLED if i in pooled else labels[i]) for i in range(12))
    result, _ = _certify(scores, suggested, lot, labels, auto, right)
    label_result, _ = _certify(scores, suggested, lot, labels, per_label, right)
    assert result.accepted.sum() > label_result.accepted.sum()
    assert right[result.accepted].mean() >= TARGET - 0.02


def test_auto_scope_keeps_its_promise_per_group():
    """Over 200 pools, the pooled group's region (and every label's own) falls under the target in at most
    1 - confidence of the runs (plus binomial slack)."""
    labels = [f"l{i}" for i in range(12)]
    broken, tested = {}, {}
    for seed in range(200):
        scores, suggested, right, p_right = _many_labels(seed)
        lot = np.ones(len(scores), dtype=bool)
        plan = plan_certification(scores, suggested, lot, labels, np.clip(p_right + 0.03, 0, 1),
                                  sample_priority(len(scores), seed + 5), scope="auto", max_n=1500)
        result, _ = _certify(scores, suggested, lot, labels, plan, right)
        members = plan.members(suggested)
        for name, group in result.groups.items():
            tested[name] = tested.get(name, 0) + 1
            if group.threshold is not None:
                region = members[name] & (scores >= group.threshold)
                broken[name] = broken.get(name, 0) + int(right[region].mean() < TARGET)
    slack = 3 * math.sqrt(0.05 * 0.95 / 200)
    assert tested.get(POOLED, 0) > 100
    for name, count in broken.items():
        assert count / 200 <= 1 - CONFIDENCE + slack, (name, count)
