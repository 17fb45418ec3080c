"""``python -m annotate simulate``: the loop on a real labelled slice of AG News, as a user runs it (a subprocess),
and its refusals of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annotate.simulate import LabelledSplit, gold_indices, simulate
from annotate.strategies import get_strategy

REPO = Path(__file__).resolve().parents[1]
LABEL_MAP = json.dumps({"World": "world news", "Sports": "sports", "Business": "business",
                        "Sci/Tech": "science and technology"})
LABEL_ARGS = ["--label", "world news", "--label", "sports", "--label", "business", "--label", "science and technology"]


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "annotate", "simulate", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def slices(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("simulate")
    pool = (data_dir / "classification/ag_news/train_unlabeled_8k_description_only.jsonl").read_text().splitlines()
    test = (data_dir / "classification/ag_news/test.jsonl").read_text().splitlines()
    (root / "pool.jsonl").write_text("\n".join(pool[::16]) + "\n")
    (root / "eval.jsonl").write_text("\n".join(test[::38]) + "\n")
    return root


@pytest.mark.slow
def test_simulate_writes_the_report_and_learning_curve(slices):
    out = slices / "out" / "report.json"
    result = _run(slices / "pool.jsonl", *LABEL_ARGS, "--label-map", LABEL_MAP, "--hypothesis-template",
                  "This news article is about {}.", "--eval", slices / "eval.jsonl", "--eval-text-field", "title",
                  "--eval-text-field", "description", "--budgets", "0,50,100", "--round-size", "25",
                  "--strategy", "least-confidence,random", "--report-json", out, "--cache-dir", slices / "cache")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["zero_shot"]["eval_accuracy"] > 0.4
    assert [e["reviewed"] for e in report["curve"]] == [0, 50, 100]
    assert {r["strategy"] for r in report["runs"]} == {"least-confidence", "random"}
    for entry in report["curve"]:
        assert {"eval_accuracy", "eval_macro_f1", "pending_accuracy", "refit_seconds"} <= set(entry)
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "zero-shot: accuracy" in result.stdout and "least-confidence" in result.stdout
    for entry in report["curve"]:
        assert 0.0 <= entry["eval_ece"] <= 1.0 and entry["eval_calibration"]["curve"]["count"]
    assert out.with_suffix(".reliability.png").stat().st_size > 10_000
    # the same run again, now from the cache: the same figures (the fresh run reports what the cache holds)
    rerun = slices / "out" / "rerun.json"
    result = _run(slices / "pool.jsonl", *LABEL_ARGS, "--label-map", LABEL_MAP, "--hypothesis-template",
                  "This news article is about {}.", "--eval", slices / "eval.jsonl", "--eval-text-field", "title",
                  "--eval-text-field", "description", "--budgets", "0,50,100", "--round-size", "25",
                  "--strategy", "least-confidence,random", "--report-json", rerun, "--cache-dir", slices / "cache",
                  "--log-level", "info")
    assert result.returncode == 0 and "reusing the scored texts" in result.stderr

    def figures(path):
        data = json.loads(path.read_text())
        return [[{k: v for k, v in e.items() if not k.endswith("_seconds")} for e in run["curve"]]
                for run in data["runs"]], data["zero_shot"]

    assert figures(rerun) == figures(out)
    # a second run reuses the scored texts (no model load needed for them)
    again = _run(slices / "pool.jsonl", *LABEL_ARGS, "--label-map", LABEL_MAP, "--hypothesis-template",
                 "This news article is about {}.", "--budgets", "0,25", "--cache-dir", slices / "cache",
                 "--log-level", "info")
    assert again.returncode == 0 and "reusing the scored texts" in again.stderr


def test_gold_values_missing_from_the_label_map_exit_2_and_write_nothing(slices):
    out = slices / "bad" / "report.json"
    result = _run(slices / "pool.jsonl", *LABEL_ARGS, "--label-map", json.dumps({"World": "world news"}),
                  "--report-json", out)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no candidate label" in lines[0] and "'Sports'" in lines[0], lines
    assert not out.parent.exists()
    result = _run(slices / "pool.jsonl", *LABEL_ARGS, "--label-map", "{not json", "--report-json", out)
    assert result.returncode == 2 and "--label-map is not valid JSON" in result.stderr
    result = _run(slices / "pool.jsonl", *LABEL_ARGS, "--label-map", LABEL_MAP, "--budgets", "0,100000")
    assert result.returncode == 2 and "has 499 records" in result.stderr


def test_gold_indices_and_simulate_on_separable_data():
    assert gold_indices(["a", "B"], ["a", "b"], {"B": "b"}, "f").tolist() == [0, 1]
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 12))
    y = rng.integers(0, 3, 600)
    x = centers[y] + 0.9 * rng.normal(size=(600, 12))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    logits = 2 * x @ centers.T
    p0 = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report = simulate(LabelledSplit(x, p0, y), ["a", "b", "c"], [0, 40, 80], strategy=get_strategy("margin"),
                      round_size=20, progress=False)
    assert report["evaluated_on"] == "pending pool records"
    curve = report["curve"]
    assert [e["reviewed"] for e in curve] == [0, 40, 80]
    assert curve[-1]["eval_accuracy"] >= report["zero_shot"]["eval_accuracy"] - 0.02


def test_split_rows_is_seeded_disjoint_and_capped():
    from annotate.simulate import split_rows

    pool, evaluation = split_rows(100, holdout=0.3, pool_sample=50, eval_sample=20, seed=0)
    assert len(pool) == 50 and len(evaluation) == 20 and not set(pool) & set(evaluation)
    again = split_rows(100, holdout=0.3, pool_sample=50, eval_sample=20, seed=0)
    assert pool.tolist() == again[0].tolist() and evaluation.tolist() == again[1].tolist()
    assert split_rows(100, holdout=0.3, seed=1)[1].tolist() != split_rows(100, holdout=0.3, seed=0)[1].tolist()
    full_pool, full_eval = split_rows(100, holdout=0.3, seed=0)
    assert len(full_eval) == 30 and set(pool) <= set(full_pool)
    with pytest.raises(ValueError, match="holdout"):
        split_rows(10, holdout=1.0)


def test_noise_flips_reviews_and_measures_the_suspect_detection_at_each_budget():
    """Separable clusters, 10% of the simulated reviews flipped: every budget with enough reviews reports the
    detection against the flipped set; the flagged records are mostly flips (chance: 10%)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 12))
    y = rng.integers(0, 3, 600)
    x = centers[y] + 0.9 * rng.normal(size=(600, 12))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    logits = 2 * x @ centers.T
    p0 = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report = simulate(LabelledSplit(x, p0, y), ["a", "b", "c"], [0, 10, 200], strategy=get_strategy("random"),
                      round_size=50, progress=False, noise=0.1)
    assert report["noise"] == 0.1
    zero, few, enough = report["curve"]
    assert zero["suspects"] is None and few["suspects"] is None  # 0 and 10 reviews: too few to detect
    s = enough["suspects"]
    assert s["reviewed"] == 200 and 5 <= s["flipped"] <= 40
    assert s["precision"] > 0.5 and s["recall"] > 0.5 and s["auroc"] > 0.8
    assert set(s["filters"]) >= {"prune_by_noise_rate", "both"} and s["filter_by"] == "prune_by_noise_rate"
    clean = simulate(LabelledSplit(x, p0, y), ["a", "b", "c"], [0, 200], strategy=get_strategy("random"),
                     round_size=50, progress=False)
    assert "suspects" not in clean["curve"][-1] and "noise" not in clean
def _separable(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 12))
    y = rng.integers(0, 3, n)
    x = centers[y] + 0.9 * rng.normal(size=(n, 12))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    logits = 2 * x @ centers.T
    return LabelledSplit(x, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), y)


def test_bulk_acceptance_counts_certification_reviews_and_keeps_its_promise():
    from annotate.simulate import AcceptanceSettings

    pool = _separable()
    n = len(pool.gold)
    report = simulate(pool, ["a", "b", "c"], [0, 100, 300], strategy=get_strategy("least-confidence"),
                      round_size=50, progress=False, acceptance=AcceptanceSettings(precision=0.9))
    baseline = report["zero_shot"]["accept"]
    assert baseline["accept"]["certification_reviews"] > 0
    previous = 0
    for entry in [baseline, *report["curve"]]:
        a = entry["accept"]
        assert a["certification_reviews"] >= previous  # the sample is reused and grows, never forgotten
        previous = a["certification_reviews"] if entry is not baseline else 0
        reviewed = entry.get("reviewed", 0)
        # every record is reviewed in the loop, reviewed for certification, accepted, or left to people
        assert a["pending"] == n - reviewed - a["certification_reviews"]
        assert entry["human_share"] == pytest.approx(1 - a["accepted"] / n)
        assert a["share"] == pytest.approx(a["accepted"] / (n - reviewed))
        if a["accepted"]:
            assert a["precision"] >= 0.88  # promised 0.9 at 95% confidence; measured on gold
            assert set(a["threshold"]) <= {"a", "b", "c"}
    assert report["curve"][-1]["accept"]["share"] > 0.3


def test_cross_fitted_acceptance_certifies_each_fold_on_a_head_that_never_saw_its_sample():
    """With cross-fitting, each fold's suggestions come from a head fitted on the other fold's certification reviews:
    groups are named by fold, both folds are certified, and the accepted suggestions keep the promise."""
    from annotate.simulate import AcceptanceSettings

    pool = _separable()
    report = simulate(pool, ["a", "b", "c"], [0, 100, 300], strategy=get_strategy("least-confidence"),
                      round_size=50, progress=False, acceptance=AcceptanceSettings(precision=0.9, cross_fit=True))
    last = report["curve"][-1]["accept"]
    assert last["cross_fit"] and last["certification_reviews"] > 0
    assert {name.rsplit("@", 1)[1] for name in last["certification"]} == {"0", "1"}
    assert last["share"] > 0.3 and last["precision"] >= 0.88


@pytest.mark.slow
def test_simulate_accept_precision_on_real_texts(slices):
    out = slices / "accept" / "report.json"
    result = _run(slices / "pool.jsonl", *LABEL_ARGS, "--label-map", LABEL_MAP, "--hypothesis-template",
                  "This news article is about {}.", "--budgets", "0,100", "--accept-precision", "0.9",
                  "--accept-scope", "pooled", "--report-json", out, "--cache-dir", slices / "cache")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    n = report["pool_size"]
    # the sample is planned where the head's scores promise a region at 0.9: after 100 reviews at least
    assert report["curve"][-1]["accept"]["certification_reviews"] > 0
    for entry in report["curve"]:
        a = entry["accept"]
        assert entry["human_share"] == pytest.approx((entry["reviewed"] + a["certification_reviews"]
                                                      + a["pending"] - a["accepted"]) / n)
        if a["accepted"]:
            assert a["precision"] >= 0.85
    assert "bulk acceptance at precision >= 0.9" in result.stdout
    assert out.with_suffix(".accept.png").stat().st_size > 10_000


def test_accept_precision_outside_0_1_exits_2_with_one_line(slices):
    result = _run(slices / "pool.jsonl", *LABEL_ARGS, "--label-map", LABEL_MAP, "--accept-precision", "1.5")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--accept-precision 1.5" in lines[0] and "between 0 and 1" in lines[0], lines


class _Recording:
    """The least-confidence strategy, recording what it was offered and what it took (a spy on our own interface,
    not a stand-in: the selection is the real strategy's)."""

    def __init__(self):
        self.inner, self.offered, self.taken = get_strategy("least-confidence"), [], []
        self.name = self.inner.name

    def select(self, scores, pending, count, rng):
        take = self.inner.select(scores, pending, count, rng)
        self.offered.append(np.asarray(pending).copy())
        self.taken.append(np.asarray(take).copy())
        return take


def _synthetic(seed: int, n: int, k: int = 3, d: int = 12):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 2.0
    gold = rng.integers(0, k, size=n)
    embeddings = centres[gold] + rng.normal(size=(n, d))
    logits = np.eye(k)[gold] * 1.2 + rng.normal(size=(n, k))  # a weak, noisy zero-shot teacher
    zero_shot = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return LabelledSplit(embeddings=embeddings, zero_shot=zero_shot, gold=gold)


def test_simulate_never_reads_the_gold_of_records_nobody_reviewed():
    """Leakage: change the gold label of every pool record the simulated reviewers never reached; the records
    reviewed, the head and every figure on the held-out split stay exactly the same. Reviewed records leave the
    pending set at once, and without a held-out split the figures are measured on the pending records only."""
    pool, held_out, labels = _synthetic(0, 400), _synthetic(1, 200), ["a", "b", "c"]
    first = _Recording()
    report = simulate(pool, labels, [0, 40, 100], strategy=first, round_size=20, evaluation=held_out, progress=False)
    reviewed = np.concatenate(first.taken)
    assert len(reviewed) == 100 and len(set(reviewed.tolist())) == 100
    for i, offered in enumerate(first.offered):  # nothing taken before is offered again
        assert not set(offered.tolist()) & set(np.concatenate(first.taken[:i]).tolist() if i else [])
    never = np.setdiff1d(np.arange(len(pool.gold)), reviewed)
    altered = LabelledSplit(pool.embeddings, pool.zero_shot, pool.gold.copy())
    altered.gold[never] = (altered.gold[never] + 1) % len(labels)
    second = _Recording()
    again = simulate(altered, labels, [0, 40, 100], strategy=second, round_size=20, evaluation=held_out,
                     progress=False)
    assert np.array_equal(np.concatenate(second.taken), reviewed)
    for a, b in zip(report["curve"], again["curve"]):
        assert (a["eval_accuracy"], a["eval_macro_f1"], a["mode"]) == (b["eval_accuracy"], b["eval_macro_f1"], b["mode"])
    assert any(a["pending_accuracy"] != b["pending_accuracy"] for a, b in zip(report["curve"], again["curve"]))
    # without a held-out split, the figures are taken on the records still pending, never on reviewed ones
    pending_only = simulate(pool, labels, [0, 100], strategy=_Recording(), round_size=20, progress=False)
    assert pending_only["evaluated_on"] == "pending pool records"
    assert pending_only["curve"][-1]["eval_accuracy"] == pytest.approx(pending_only["curve"][-1]["pending_accuracy"])
