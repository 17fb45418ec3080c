"""``simulate``: the review loop without Argilla, gold labels standing in for reviewers.

The same fitting and scoring code as ``push`` and ``refresh`` (:func:`annotate.adaptive.adapt`) runs on a
labelled pool: records are "reviewed" round by round in the order of a query strategy
(:mod:`annotate.strategies`), the head is refitted after each round, and at each review budget the suggestions are
scored on an evaluation set (or on the still-pending pool records). Next to the adapted head, each budget also
records the two references the head must beat: the plain zero-shot scores and a logistic regression trained on
the reviewed records alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from annotate.acceptance import certify, plan_certification, sample_priority
from annotate.adaptive import HeadConfig, _logistic, adapt, correct_zero_shot, pool_adaptation
from annotate.strategies import QueryStrategy

logger = logging.getLogger(__name__)


@dataclass
class LabelledSplit:
    """Embeddings ``(n, d)``, zero-shot probabilities ``(n, K)`` and gold label indices ``(n,)`` of one split."""

    embeddings: np.ndarray
    zero_shot: np.ndarray
    gold: np.ndarray


def reliability(scores: np.ndarray, gold: np.ndarray, n_bins: int = 10) -> dict:
    """Top-label calibration of ``(n, K)`` scores against ``(n,)`` gold indices: expected calibration error (15
    equal-width bins, Guo et al. 2017: :func:`service.calibration.expected_calibration_error`), mean and median
    top score, and the reliability diagram's points (``sklearn.calibration.calibration_curve`` over ``n_bins``
    equal-width bins of the top score: accuracy and mean top score per non-empty bin, and the bin's count)."""
    from sklearn.calibration import calibration_curve

    from service.calibration import expected_calibration_error

    confidence = scores.max(axis=1)
    correct = (scores.argmax(axis=1) == gold).astype(int)
    out = {"ece": expected_calibration_error(scores, gold), "mean_confidence": float(confidence.mean()),
           "median_confidence": float(np.median(confidence)), "accuracy": float(correct.mean())}
    if len(np.unique(correct)) > 1:  # calibration_curve needs both outcomes
        accuracy, mean_score = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform")
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        counts = np.bincount(np.clip(np.searchsorted(edges[1:-1], confidence, side="right"), 0, n_bins - 1),
                             minlength=n_bins)
        out["curve"] = {"accuracy": [round(float(v), 4) for v in accuracy],
                        "mean_score": [round(float(v), 4) for v in mean_score],
                        "count": [int(c) for c in counts if c]}
    return out


def _metrics(scores: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    predicted = scores.argmax(axis=1)
    return float((predicted == gold).mean()), float(f1_score(gold, predicted, average="macro",
                                                             labels=np.arange(scores.shape[1]), zero_division=0))


def simulate(pool: LabelledSplit, labels, budgets, *, strategy: QueryStrategy, round_size: int = 25,
             evaluation: LabelledSplit | None = None, config: HeadConfig | None = None, seed: int = 0,
             progress: bool = True, noise: float = 0.0, acceptance: "AcceptanceSettings | None" = None) -> dict:
    """Run the loop on ``pool`` and return the report (see ``python -m annotate simulate --help``).

    Args:
        pool: the pool with its gold labels (the stand-in reviewers).
        labels: the ``K`` candidate labels.
        budgets: increasing review counts at which to measure (``0`` = the pool-adapted head, before any review).
        strategy: review order.
        round_size: records reviewed between two refits.
        evaluation: held-out split to measure on; ``None``: measure on the pending pool records only.
        noise: share of the simulated reviews flipped to another label (:func:`annotate.suspects.flip_labels`);
            when > 0, each curve entry also measures the suspect detection against the flips (``"suspects"``).
        acceptance: when given, bulk acceptance at a stated precision after every budget (:func:`acceptance_entry`):
            each curve entry gets ``"accept"`` and ``"human_share"``, the report a zero-shot baseline. Its
            certification records are reviewed (gold) but kept out of the head's fit and of the review order.

    Returns:
        ``{"zero_shot": {...}, "curve": [{"reviewed", "eval_accuracy", "eval_macro_f1", "pending_accuracy",
        "reviews_only_eval_accuracy", "eval_ece", "eval_calibration", "pending_calibration", "mode", "note",
        "pseudo_weight", "refit_seconds"[, "suspects"]}, ...], ...}``; each ``*_calibration`` is :func:`reliability`'s.

    Raises:
        ValueError: budgets not increasing, or larger than the pool.
    """
    from tqdm import tqdm

    budgets = sorted(set(int(b) for b in budgets))
    n, k = pool.zero_shot.shape
    if budgets[0] < 0 or budgets[-1] > n:
        raise ValueError(f"budgets must lie in [0, {n}] (the pool size); got {budgets}")
    rng = np.random.default_rng(seed)
    config = config or HeadConfig(seed=seed)
    if hasattr(strategy, "prepare"):  # strategies that read the pool's geometry (TypiClust)
        strategy.prepare(pool.embeddings, seed=seed)
    target = evaluation or pool
    zs_acc, zs_f1 = _metrics(target.zero_shot, target.gold)
    bias = correct_zero_shot(pool.zero_shot, config)
    corrected_acc, corrected_f1 = _metrics(bias.apply(target.zero_shot), target.gold)
    report: dict = {"pool_size": n, "labels": list(labels), "strategy": strategy.name, "round_size": round_size,
                    "evaluated_on": "eval" if evaluation is not None else "pending pool records",
                    "eval_size": len(target.gold),
                    "zero_shot": {"eval_accuracy": zs_acc, "eval_macro_f1": zs_f1,
                                  "pool_accuracy": _metrics(pool.zero_shot, pool.gold)[0],
                                  "eval_calibration": reliability(target.zero_shot, target.gold)},
                    "corrected_zero_shot": {"eval_accuracy": corrected_acc, "eval_macro_f1": corrected_f1,
                                            "bias": bias.to_dict(list(labels)),
                                            "eval_calibration": reliability(bias.apply(target.zero_shot),
                                                                            target.gold)},
                    "curve": []}
    reviewed: dict[int, int] = {}
    answers, flipped = _reviewer_answers(pool.gold, k, noise, seed)
    if noise > 0:
        report["noise"] = noise
    audit = AcceptanceState.start(n, acceptance, seed) if acceptance is not None else None
    if audit is not None:
        report["zero_shot"]["accept"] = acceptance_entry(pool, labels, bias.apply(pool.zero_shot), {},
                                                              AcceptanceState.start(n, acceptance, seed))

    began = time.perf_counter()
    pseudo = pool_adaptation(pool.embeddings, pool.zero_shot, labels, config)
    report["pseudo_label_seconds"] = round(time.perf_counter() - began, 4)
    bar = tqdm(total=budgets[-1], unit="review", desc=f"simulate ({strategy.name})", disable=not progress)
    adapted = None
    for budget in budgets:
        while len(reviewed) < budget:
            current = adapted.scores if adapted is not None else bias.apply(pool.zero_shot)
            pending = np.setdiff1d(np.arange(n), np.fromiter(reviewed, dtype=np.int64, count=len(reviewed)))
            if audit is not None:  # certification records are reviewed already: the loop does not show them again
                pending = np.setdiff1d(pending, audit.rows())
            take = strategy.select(current, pending, min(round_size, budget - len(reviewed)), rng)
            reviewed.update({int(r): int(answers[r]) for r in take})
            bar.update(len(take))
            adapted = adapt(pool.embeddings, pool.zero_shot, labels, reviewed=reviewed, config=config, pseudo=pseudo)
        began = time.perf_counter()
        adapted = adapt(pool.embeddings, pool.zero_shot, labels, reviewed=reviewed, config=config, pseudo=pseudo)
        refit_seconds = time.perf_counter() - began
        pending = np.setdiff1d(np.arange(n), np.fromiter(reviewed, dtype=np.int64, count=len(reviewed)))
        if evaluation is not None:
            eval_scores = adapted.predict(evaluation.embeddings, evaluation.zero_shot)
            eval_gold = evaluation.gold
        else:
            eval_scores, eval_gold = adapted.scores[pending], pool.gold[pending]
        accuracy, macro_f1 = _metrics(eval_scores, eval_gold)
        entry = {"reviewed": len(reviewed), "eval_accuracy": accuracy, "eval_macro_f1": macro_f1,
                 "pending_accuracy": float((adapted.scores[pending].argmax(axis=1) == pool.gold[pending]).mean())
                 if len(pending) else None,
                 "mode": adapted.report.mode, "pseudo_weight": adapted.report.pseudo_weight,
                 "correction_c": adapted.report.correction_c,
                 "pseudo_labels": adapted.report.pseudo_labels, "temperature": adapted.report.temperature,
                 "cv_accuracy": adapted.report.cv_accuracy, "refit_seconds": round(refit_seconds, 4),
                 "reviews_only_eval_accuracy": _reviews_only(pool, reviewed, k, config, evaluation, pending),
                 "eval_calibration": reliability(eval_scores, eval_gold),
                 "pending_calibration": reliability(adapted.scores[pending], pool.gold[pending]) if len(pending)
                 else None,
                 "pending_zero_shot_calibration": reliability(adapted.zero_shot(pool.zero_shot[pending]),
                                                              pool.gold[pending]) if len(pending) else None,
                 "note": adapted.report.note}
        entry["eval_ece"] = entry["eval_calibration"]["ece"]
        if noise > 0:
            entry["suspects"] = _suspects_entry(pool, labels, reviewed, flipped, config, pseudo)
        if audit is not None:
            def refit(extra, reviewed=reviewed):
                return adapt(pool.embeddings, pool.zero_shot, labels, reviewed={**reviewed, **extra}, config=config,
                             pseudo=pseudo).scores

            entry.update(acceptance_entry(pool, labels, adapted.scores, reviewed, audit, refit=refit))
        report["curve"].append(entry)
        logger.info("reviewed %d: accuracy %.4f (zero-shot %.4f, reviews only %s), %s, refit %.2f s",
                    entry["reviewed"], accuracy, zs_acc, entry["reviews_only_eval_accuracy"], entry["mode"],
                    refit_seconds)
    bar.close()
    report["prior"] = adapted.report.prior if adapted is not None else None
    return report


def _reviewer_answers(gold: np.ndarray, k: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """What the simulated reviewers submit for each pool row: the gold label, or with ``noise`` > 0 a label flipped
    with that probability (:func:`annotate.suspects.flip_labels`); and which rows are flipped."""
    if noise <= 0:
        return np.asarray(gold), np.zeros(len(gold), dtype=bool)
    from annotate.suspects import flip_labels

    return flip_labels(gold, k, noise, seed)


def _suspects_entry(pool: LabelledSplit, labels, reviewed: dict[int, int], flipped: np.ndarray, config: HeadConfig,
                    pseudo: tuple) -> dict | None:
    """The suspect detection (:func:`annotate.suspects.detect`) on the reviews so far, against the flipped ones
    (:func:`annotate.suspects.detection_metrics`); ``None`` when there are too few reviews to run it."""
    from annotate.suspects import SuspectsError, detect, detection_metrics

    try:
        report = detect(pool.embeddings, pool.zero_shot, labels, reviewed, config=config, pseudo=pseudo)
    except SuspectsError as exc:
        logger.info("no suspect detection at %d reviews: %s", len(reviewed), exc)
        return None
    metrics = detection_metrics(report, set(np.flatnonzero(flipped).tolist()))
    logger.info("suspects at %d reviews: %d flipped, %d flagged, precision %s, recall %s (%.1f s)", len(reviewed),
                metrics["flipped"], metrics["flagged"], metrics["precision"], metrics["recall"], metrics["seconds"])
    return metrics


@dataclass
class AcceptanceSettings:
    """Bulk acceptance in ``simulate`` (see :mod:`annotate.acceptance`).

    Attributes:
        precision: target precision of the accepted records, in (0, 1).
        confidence: confidence of the one-sided lower bound, in (0, 1).
        scope: ``"auto"`` (the default: one threshold per label that has the records for it, one for the other
            labels together; :mod:`annotate.acceptance`, "Groups"), ``"label"`` (one per label: each label's
            precision is guaranteed) or ``"pooled"`` (one threshold and one sample for all labels: only the union's
            precision is).
        planning_inflation: the sample is planned for a region error ``inflation * (1 - head probability)``: the
            head's probabilities overstate precision (issue 22: 0.95 claimed, 0.91 real at 300 AG News reviews).
            Only the number of reviews spent depends on it. Chosen on the tune halves of the dev tasks
            (docs/adaptive.md, "Bulk acceptance").
        first_test: the highest threshold tested holds this many times the zero-defect sample size
            (:func:`annotate.acceptance.plan_certification`); chosen with ``planning_inflation``.
        cross_fit: use the certification reviews for the head too, cross-fitted (:func:`acceptance_entry`).
    """

    precision: float = 0.95
    confidence: float = 0.95
    scope: str = "auto"
    planning_inflation: float = 2.0
    first_test: float = 2.0
    cross_fit: bool = False


@dataclass
class AcceptanceState:
    """The certification sample of one simulated session: a seeded random priority over the pool, a seeded fold (0
    or 1) per row for cross-fitting, and the records reviewed for certification so far (``{row: gold index}``),
    reused across budgets."""

    settings: AcceptanceSettings
    priority: np.ndarray
    audited: dict
    folds: np.ndarray | None = None

    @classmethod
    def start(cls, n: int, settings: AcceptanceSettings, seed: int) -> "AcceptanceState":
        folds = np.random.default_rng(seed + 104729).integers(0, 2, n)  # a third stream: apart from the sample
        return cls(settings, sample_priority(n, seed + 7919), {}, folds)  # its own stream, apart from the review order

    def rows(self) -> np.ndarray:
        return np.fromiter(self.audited, dtype=np.int64, count=len(self.audited))


def acceptance_entry(pool: LabelledSplit, labels, scores: np.ndarray, reviewed: dict[int, int],
                     state: AcceptanceState, refit=None) -> dict:
    """Bulk acceptance after one budget, from the simulated reviews only: plan the certification sample of each
    group on the records not reviewed in the loop, review the sample's new records (their gold labels, counted),
    certify (:func:`annotate.acceptance.certify`) and measure the accepted records against gold.

    Cross-fitting (``state.settings.cross_fit`` and ``refit`` given): the rows are split into two seeded folds; the
    suggestions of fold ``f`` come from a head fitted on the loop's reviews plus the certification reviews of the
    *other* fold made before this budget (``refit(extra reviews) -> (n, K) scores``), and each fold is certified on
    its own, groups named ``<group>@<fold>``. So the certification reviews teach the head, yet no certified
    suggestion was fitted on its own fold's sample: each fold's test is exactly the uncrossed one on a head that
    never saw that fold's labels, and the promise holds per fold and group. Reviews the certification asks for
    during this budget join the heads at the next budget.

    Args:
        pool: the pool; gold labels are read for reviewed records only, and to measure the accepted ones.
        labels: the ``K`` label names.
        scores: ``(n, K)`` current suggestions' probabilities (the head is not fitted on the certification records).
        reviewed: ``{row: gold}`` the loop's reviews (fitted on: outside the lot).
        state: the session's certification sample, updated in place.
        refit: for cross-fitting, ``extra -> scores`` of the head fitted on ``reviewed`` and ``extra``.

    Returns:
        ``{"accept": {"share", "precision", "threshold": {group: t}, "certification_reviews", "accepted",
        "pending", "oracle_share", "naive", "certification"}, "human_share"}``: ``share`` = accepted / records not
        reviewed in the loop; ``precision`` = accuracy of the accepted suggestions on gold (``None`` when none);
        ``certification_reviews`` = every certification review so far; ``human_share`` = (loop reviews +
        certification reviews + pending records not accepted) / pool.
    """
    settings = state.settings
    n = len(pool.gold)
    labels = [str(label) for label in labels]
    lot = np.ones(n, dtype=bool)
    lot[list(reviewed)] = False
    crossed = settings.cross_fit and refit is not None and state.folds is not None
    if crossed:
        before = dict(state.audited)
        scores = np.asarray(scores, dtype=np.float64).copy()
        for fold in (0, 1):
            extra = {r: g for r, g in before.items() if state.folds[r] != fold}
            if extra:
                fitted = refit(extra)
                scores[state.folds == fold] = fitted[state.folds == fold]
        parts = [(f"@{fold}", lot & (state.folds == fold)) for fold in (0, 1)]
    else:
        parts = [("", lot)]
    suggested, top = scores.argmax(axis=1), scores.max(axis=1)
    expected = 1.0 - settings.planning_inflation * (1.0 - top)
    accepted = np.zeros(n, dtype=bool)
    correct = np.full(n, np.nan)
    thresholds, plans, certifications = {}, {}, {}
    for suffix, part in parts:
        plan = plan_certification(top, suggested, part, labels, expected, state.priority, target=settings.precision,
                                  confidence=settings.confidence, scope=settings.scope,
                                  first_test=settings.first_test)
        while True:
            rows = state.rows()
            correct[rows] = (suggested[rows] == pool.gold[rows]).astype(np.float64)
            result = certify(top, suggested, part, labels, plan, correct)
            if not len(result.requests):
                break
            state.audited.update({int(r): int(pool.gold[r]) for r in result.requests})  # the sample's reviews
        accepted |= result.accepted
        thresholds.update({g + suffix: round(t, 6) for g, t in result.thresholds.items()})
        plans.update({g + suffix: p.to_dict() for g, p in plan.groups.items()})
        certifications.update({g + suffix: c.to_dict() for g, c in result.groups.items()})
    rows = state.rows()
    correct[rows] = (suggested[rows] == pool.gold[rows]).astype(np.float64)
    pending = lot & np.isnan(correct)
    right = suggested == pool.gold
    base = int(lot.sum())  # records not reviewed in the loop: the pending pool before certification
    return {"accept": {"share": float(accepted.sum() / base) if base else 0.0,
                       "precision": float(right[accepted].mean()) if accepted.any() else None,
                       "threshold": thresholds, "certification_reviews": len(state.audited),
                       "accepted": int(accepted.sum()), "pending": int(pending.sum()),
                       "oracle_share": _oracle_share(top[lot], right[lot], settings.precision),
                       "naive": _naive(top[lot], right[lot], settings.precision),
                       "scope": settings.scope, "target": settings.precision, "confidence": settings.confidence,
                       "cross_fit": bool(crossed), "plan": plans, "certification": certifications},
            "human_share": float((len(reviewed) + len(state.audited) + int((pending & ~accepted).sum())) / n)}


def _oracle_share(top: np.ndarray, right: np.ndarray, target: float) -> float:
    """Best possible share with one threshold, knowing every gold label (issue 22's reference figures)."""
    if not len(top):
        return 0.0
    order = np.argsort(-top, kind="stable")
    precision = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(precision >= target)
    return float((ok[-1] + 1) / len(top)) if len(ok) else 0.0


def _naive(top: np.ndarray, right: np.ndarray, target: float) -> dict:
    """The threshold the head's own probabilities suggest (their running mean reaches ``target``): its share and
    real precision (what the rule above avoids)."""
    if not len(top):
        return {"share": 0.0, "precision": None}
    order = np.argsort(-top, kind="stable")
    claimed = np.cumsum(top[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(claimed >= target)
    k = int(ok[-1] + 1) if len(ok) else 0
    return {"share": k / len(top), "precision": float(right[order[:k]].mean()) if k else None}


def _reviews_only(pool: LabelledSplit, reviewed: dict[int, int], k: int, config: HeadConfig,
                  evaluation: LabelledSplit | None, pending: np.ndarray) -> float | None:
    """Accuracy of a logistic regression on the reviewed records alone (the reference), or ``None`` below 2 classes."""
    from threadpoolctl import threadpool_limits

    if len(set(reviewed.values())) < 2:
        return None
    rows = np.fromiter(reviewed, dtype=np.int64, count=len(reviewed))
    y = np.fromiter(reviewed.values(), dtype=np.int64, count=len(reviewed))
    with threadpool_limits(1):
        coef, intercept = _logistic(pool.embeddings[rows], y, np.ones(len(rows)), k, config.c)
    if evaluation is not None:
        return float(((evaluation.embeddings @ coef.T + intercept).argmax(axis=1) == evaluation.gold).mean())
    return float(((pool.embeddings[pending] @ coef.T + intercept).argmax(axis=1) == pool.gold[pending]).mean())


def plot_reliability(report: dict, path, title: str = "") -> None:
    """Reliability diagram (accuracy against mean top score per bin, :func:`reliability`) of the zero-shot scores
    and of the suggestions at each budget of one simulate report, on its evaluation split, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=120)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    series = [("zero-shot", report["zero_shot"]["eval_calibration"])]
    series += [(f"{e['reviewed']} reviews", e["eval_calibration"]) for e in report["curve"]]
    for name, cal in series:
        if "curve" in cal:
            ax.plot(cal["curve"]["mean_score"], cal["curve"]["accuracy"], marker="o", markersize=3,
                    linestyle="--" if name == "zero-shot" else "-", label=f"{name} (ECE {cal['ece']:.3f})")
    ax.set_xlabel("top score (bin mean)")
    ax.set_ylabel(f"accuracy ({report['evaluated_on']})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title or "Reliability of the suggestions' scores", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curve(reports: list[dict], path, title: str = "") -> None:
    """Learning curves (accuracy against reviews) of one or more simulate reports, with the zero-shot and
    reviews-only references, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for report in reports:
        xs = [e["reviewed"] for e in report["curve"]]
        ax.plot(xs, [e["eval_accuracy"] for e in report["curve"]], marker="o", label=f"adapted head ({report['strategy']})")
        ax.plot(xs, [e["reviews_only_eval_accuracy"] if e["reviews_only_eval_accuracy"] is not None else np.nan
                     for e in report["curve"]], linestyle=":", marker=".",
                label=f"reviews only ({report['strategy']})")
    ax.axhline(reports[0]["zero_shot"]["eval_accuracy"], color="grey", linestyle="--", label="zero-shot")
    ax.set_xlabel("records reviewed")
    ax.set_ylabel(f"accuracy ({reports[0]['evaluated_on']})")
    ax.set_title(title or "Suggestion accuracy as reviews arrive")
    if max(e["reviewed"] for r in reports for e in r["curve"]) > 0:
        ax.set_xscale("symlog", linthresh=50)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_acceptance(reports: list[dict], path, title: str = "") -> None:
    """Human share (loop reviews + certification reviews + pending records not accepted, over the pool) against
    loop reviews, for simulate reports run with acceptance, with the static zero-shot baseline, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for report in reports:
        xs = [e["reviewed"] for e in report["curve"]]
        ax.plot(xs, [e["human_share"] for e in report["curve"]], marker="o",
                label=f"adapted head + certified acceptance ({report['strategy']})")
        ax.plot(xs, [e["accept"]["share"] for e in report["curve"]], marker=".", linestyle=":",
                label=f"accepted share of pending ({report['strategy']})")
    ax.axhline(reports[0]["zero_shot"]["accept"]["human_share"], color="grey", linestyle="--",
               label="static zero-shot + certified acceptance")
    ax.set_xlabel("records reviewed in the loop")
    ax.set_ylabel("share of the pool")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "Human share of a fully labelled pool", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Inputs of the command: labelled files, scored once and cached
# ---------------------------------------------------------------------------------------------------------------
def read_labelled(path, text_fields, gold_column: str) -> tuple[list[str], list[str]]:
    """Texts (the ``text_fields`` joined by a space) and gold values of a ``.jsonl``, ``.csv`` or ``.parquet`` file.

    Raises:
        pool.readers.InputError: missing file, unknown format or column, no rows, a row without text or gold.
    """
    from pathlib import Path

    import pandas as pd

    from pool.readers import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            raise InputError(f"unsupported format {suffix or '(none)'!r} of {path}: use .jsonl, .csv or .parquet")
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"cannot parse {path}: {exc}") from None
    for column in [*text_fields, gold_column]:
        if column not in frame.columns:
            raise InputError(f"column {column!r} not found in {path}; columns: {', '.join(map(str, frame.columns))}")
    if frame.empty:
        raise InputError(f"{path} has no rows")
    texts = [" ".join(str(v).strip() for v in values if isinstance(v, str) and v.strip())
             for values in zip(*(frame[c].tolist() for c in text_fields))]
    gold = ["" if g is None or g != g else str(g) for g in frame[gold_column].tolist()]
    empty = next((i for i, (t, g) in enumerate(zip(texts, gold)) if not t or not g), None)
    if empty is not None:
        raise InputError(f"{path}: row {empty + 1} has no text or no {gold_column!r} value")
    return texts, gold


def gold_indices(gold: list[str], labels: list[str], label_map: dict[str, str] | None, path) -> np.ndarray:
    """Gold values as candidate-label indices, through ``label_map`` (gold value -> candidate label) when given.

    Raises:
        ValueError: a gold value maps to no candidate label (the message names them and what to pass).
    """
    index = {label: i for i, label in enumerate(labels)}
    mapped = [(label_map or {}).get(g, g) for g in gold]
    unknown = sorted({g for g, m in zip(gold, mapped) if m not in index})
    if unknown:
        raise ValueError(f"gold values of {path} that are no candidate label: {', '.join(map(repr, unknown[:10]))}: "
                         "map them with --label-map '{\"gold value\": \"candidate label\"}'")
    return np.fromiter((index[m] for m in mapped), dtype=np.int64, count=len(mapped))


def scored_split(texts: list[str], scorer, cache_root, key_parts: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings, zero-shot scores)`` of ``texts``, from the cache folder when an identical run made them
    (key: the texts and ``key_parts``: labels, template, method, model), else from ``scorer`` (then cached as a
    :class:`pool.store.PoolStore`)."""
    import hashlib
    import json
    from pathlib import Path

    from annotate.tools import record_id
    from pool.store import PoolStore, StoreError, shard_table

    digest = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\x1e")
    store = PoolStore(Path(cache_root) / digest.hexdigest()[:20])
    try:
        pool = store.load(with_texts=False)
        if len(pool) == len(texts):
            logger.info("reusing the scored texts in %s", store.root)
            return pool.embeddings, pool.scores
    except StoreError:
        pass
    ids = [record_id(t, str(i)) for i, t in enumerate(texts)]  # row-numbered: repeated texts stay separate rows
    scores = scorer.score(texts)
    embeddings = scorer.embed(texts)
    store.write_shard("0", shard_table(ids, texts, scores, embeddings, key_parts["labels"]))
    store.write_meta({**key_parts, "encoder": scorer.encoder, "agent": scorer.agent, "method": scorer.served_method})
    # What the cache holds (float16 embeddings, float32 scores), not what was computed: a figure must not depend on
    # whether the cache was hit (a float16 rounding moves ties and folds enough to change accuracies by points).
    pool = store.load(with_texts=False)
    return pool.embeddings, pool.scores


def split_rows(n: int, *, holdout: float = 0.0, pool_sample: int | None = None, eval_sample: int | None = None,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of a labelled file's pool part and evaluation part: a seeded random permutation
    (``numpy.random.default_rng(seed)``) whose first ``round(holdout * n)`` rows are the evaluation part and the rest
    the pool; then each part is capped at a random ``pool_sample`` / ``eval_sample`` rows of it (the same rows for
    the same ``n`` and ``seed``). Both are returned sorted (file order).

    Raises:
        ValueError: ``holdout`` outside [0, 1), or a part left empty.
    """
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"--holdout {holdout}: give a fraction in [0, 1), e.g. 0.3")
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(holdout * n))
    evaluation, pool = order[:cut], order[cut:]
    if pool_sample is not None:
        pool = pool[:pool_sample]
    if eval_sample is not None:
        evaluation = evaluation[:eval_sample]
    if not len(pool) or (holdout > 0 and not len(evaluation)):
        raise ValueError(f"--holdout {holdout} of {n} rows leaves an empty part")
    return np.sort(pool), np.sort(evaluation)
