"""``python -m annotate simulate``: its options and what it does with them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from annotate.cli import (
    BiasCorrectionOption,
    LabelDescription,
    LabelDescriptionsFile,
    LogLevel,
    cli,
    fail,
    head_config,
    read_descriptions,
    read_labels,
    settings_from_env,
    setup_logging,
    write_json,
    zero_shot_scorer,
)


@cli.command()
def simulate(
    pool_path: Annotated[Path, typer.Argument(metavar="POOL", help="Labelled pool: .jsonl, .csv or .parquet; its gold "
                                              "labels stand in for reviewers.", show_default=False)],
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", help="A candidate label; repeat for each.",
                                                       show_default=False)] = None,
    labels_file: Annotated[Optional[Path], typer.Option(help="File with one candidate label a line.",
                                                        show_default=False)] = None,
    text_column: Annotated[str, typer.Option(help="Text column of POOL.")] = "text",
    gold_column: Annotated[str, typer.Option(help="Gold label column of POOL (and of --eval); with --multi-label a "
                                             "column of label lists, e.g. ekman.")] = "label",
    multi_label: Annotated[bool, typer.Option("--multi-label", help="Gold values are lists of labels: zero-shot "
                                              "scores per label (NLI: a sigmoid each), the one-vs-rest head "
                                              "(annotate/multilabel.py), micro/macro-F1.")] = False,
    label_map: Annotated[Optional[str], typer.Option(help="JSON object mapping gold values to candidate labels, e.g. "
                                                     "'{\"Sci/Tech\": \"science and technology\"}'.",
                                                     show_default=False)] = None,
    hypothesis_template: Annotated[str, typer.Option(help="Hypothesis, exactly one {} for the label.")]
    = "This text is about {}.",
    label_description: LabelDescription = None,
    label_descriptions_file: LabelDescriptionsFile = None,
    bias_correction: BiasCorrectionOption = None,
    eval_path: Annotated[Optional[Path], typer.Option("--eval", help="Held-out labelled file to measure on; unset: "
                                                      "the pending pool records.", show_default=False)] = None,
    eval_text_field: Annotated[Optional[list[str]], typer.Option(help="Text field(s) of --eval, joined by a space "
                                                                 "(default: --text-column).", show_default=False)]
    = None,
    holdout: Annotated[float, typer.Option(help="Without --eval: this random share of POOL (seeded by --split-seed) "
                                           "is the evaluation part, the rest the pool.", min=0.0, max=0.99)] = 0.0,
    pool_sample: Annotated[Optional[int], typer.Option(help="Use a random N records of the pool part (seeded by "
                                                       "--split-seed); unset: all.", min=1, show_default=False)] = None,
    eval_sample: Annotated[Optional[int], typer.Option(help="Use a random N records of the evaluation part (--eval or "
                                                       "--holdout); unset: all.", min=1, show_default=False)] = None,
    split_seed: Annotated[int, typer.Option(help="Seeds --holdout, --pool-sample and --eval-sample.")] = 0,
    budgets: Annotated[str, typer.Option(help="Comma-separated review counts to measure at (0 = no review).")]
    = "0,50,100,300,1000",
    round_size: Annotated[int, typer.Option(help="Reviews between two refits.", min=1)] = 25,
    strategy: Annotated[str, typer.Option(help="Review order: least-confidence, margin or random; comma-separated "
                                          "for several runs side by side.")] = "least-confidence",
    seed: Annotated[int, typer.Option(help="Seeds the random order and the head's folds.")] = 0,
    noise: Annotated[float, typer.Option(help="Share of the simulated reviews flipped to another label (uniformly, "
                                         "seeded); > 0 also measures `suspects`' detection of them at each budget.",
                                         min=0.0, max=0.5)] = 0.0,
    report_json: Annotated[Optional[Path], typer.Option(help="Write the report here (a PNG learning curve beside it).",
                                                        show_default=False)] = None,
    service_url: Annotated[Optional[str], typer.Option(help="Zero-shot service URL (env ANNOTATE_SERVICE_URL); unset: "
                                                       "in-process.", show_default=False)] = None,
    method: Annotated[str, typer.Option(help="Zero-shot method of the teacher scores.")] = "embedding",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where scored texts are kept between runs (default "
                                                      "~/.cache/zeroshot-preannotate/annotate/simulate).",
                                                      show_default=False)] = None,
    accept_precision: Annotated[Optional[float], typer.Option(help="Also certify bulk acceptance at this precision "
                                                              "after every budget (e.g. 0.95; docs/adaptive.md, "
                                                              "'Bulk acceptance').", show_default=False)] = None,
    accept_confidence: Annotated[float, typer.Option(help="Confidence of the bound behind --accept-precision.")]
    = 0.95,
    accept_scope: Annotated[str, typer.Option(help="auto: one threshold and sample per label that has the records "
                                              "for it, one for the others together; label: one per label (each "
                                              "label's precision guaranteed); pooled: one for all labels.")] = "auto",
    accept_cross_fit: Annotated[bool, typer.Option("--accept-cross-fit", help="Also fit the head on the certification "
                                                   "reviews, cross-fitted: two seeded folds, each certified on a head "
                                                   "fitted on the other fold's certification reviews.")] = False,
    log_level: LogLevel = "info",
) -> None:
    """Simulate a review with gold labels as reviewers: how accurate the suggestions get after N reviews.

    Scores and embeds POOL (and --eval) once (cached), then at each budget reviews records in --strategy order in
    rounds of --round-size, refits the adapted head after each round, and reports accuracy and macro-F1 next to
    the plain zero-shot scores and to a classifier trained on the reviews alone. With --accept-precision, each
    budget also certifies which pending suggestions may be accepted in bulk, counting the certification reviews.
    """
    from annotate.simulate import (
        AcceptanceSettings,
        LabelledSplit,
        gold_indices,
        plot_acceptance,
        plot_curve,
        plot_reliability,
        read_labelled,
        scored_split,
        split_rows,
    )
    from annotate.simulate import simulate as run_simulate
    from annotate.strategies import get_strategy
    from pool import readers
    from pool.scorers import ScoringError

    settings = settings_from_env(service_url=service_url, bias_correction=bias_correction)
    try:
        acceptance = None
        if accept_precision is not None:
            for name, value in (("--accept-precision", accept_precision), ("--accept-confidence", accept_confidence)):
                if not 0 < value < 1:
                    raise ValueError(f"{name} {value:g}: give a number strictly between 0 and 1, e.g. 0.95")
            if multi_label:
                raise ValueError("--accept-precision certifies single-label suggestions: drop --multi-label or it")
            if accept_scope not in ("auto", "label", "pooled"):
                raise ValueError(f"--accept-scope {accept_scope!r}: give auto, label or pooled")
            acceptance = AcceptanceSettings(precision=accept_precision, confidence=accept_confidence,
                                            scope=accept_scope, cross_fit=accept_cross_fit)
        labels = read_labels(label, labels_file)
        descriptions = read_descriptions(label_description, label_descriptions_file, labels)
        from service.zeroshot import validate_template

        validate_template(hypothesis_template)
        mapping = json.loads(label_map) if label_map else None
        if mapping is not None and (not isinstance(mapping, dict)
                                    or not all(isinstance(v, str) for v in mapping.values())):
            raise ValueError("--label-map must be a JSON object of strings")
        strategies = [get_strategy(name.strip()) for name in strategy.split(",") if name.strip()]
        budget_list = sorted({int(b) for b in budgets.split(",") if b.strip()})
        if not budget_list or budget_list[0] < 0:
            raise ValueError(f"--budgets {budgets!r}: give non-negative integers, e.g. 0,50,100,300,1000")
        if eval_path is not None and holdout > 0:
            raise ValueError("give either --eval or --holdout, not both")
        if multi_label and noise > 0:
            raise ValueError("--noise measures the single-label suspect detection: drop --multi-label or --noise")
        if multi_label:
            from annotate.multilabel import read_label_sets

            pool_texts, pool_y = read_label_sets(pool_path, [text_column], gold_column, labels, mapping)
            if eval_path is not None:
                eval_texts, eval_y = read_label_sets(eval_path, eval_text_field or [text_column], gold_column, labels,
                                                     mapping)
        else:
            pool_texts, pool_gold = read_labelled(pool_path, [text_column], gold_column)
            if pool_gold[0].startswith("["):
                raise ValueError(f"{gold_column!r} of {pool_path} holds lists of labels: pass --multi-label")
            pool_y = gold_indices(pool_gold, labels, mapping, pool_path)
        pool_y = np.asarray(pool_y)
        pool_rows, eval_rows = split_rows(len(pool_texts), holdout=holdout, pool_sample=pool_sample,
                                          eval_sample=eval_sample if eval_path is None else None, seed=split_seed)
        if holdout > 0:
            eval_texts, eval_y = [pool_texts[i] for i in eval_rows], pool_y[eval_rows]
        pool_texts, pool_y = [pool_texts[i] for i in pool_rows], pool_y[pool_rows]
        if budget_list[-1] > len(pool_texts):
            raise ValueError(f"--budgets goes up to {budget_list[-1]} but the pool has {len(pool_texts)} records")
        if eval_path is not None and not multi_label:
            eval_texts, eval_gold = read_labelled(eval_path, eval_text_field or [text_column], gold_column)
            eval_y = gold_indices(eval_gold, labels, mapping, eval_path)
        if eval_path is not None and eval_sample is not None:
            keep = split_rows(len(eval_texts), pool_sample=eval_sample, seed=split_seed)[0]
            eval_texts, eval_y = [eval_texts[i] for i in keep], np.asarray(eval_y)[keep]
    except json.JSONDecodeError as exc:
        raise fail(f"--label-map is not valid JSON: {exc.msg}", 2) from None
    except (ValueError, readers.InputError) as exc:
        raise fail(str(exc), 2) from None
    setup_logging(log_level)
    scorer = zero_shot_scorer(settings, labels, hypothesis_template, method, multi_label, descriptions)
    root = cache_dir or Path.home() / ".cache" / "zeroshot-preannotate" / "annotate" / "simulate"
    key = {"labels": labels, "hypothesis_template": hypothesis_template, "method": method, "model": scorer.model_id,
           **({"multi_label": True} if multi_label else {}),
           **({"label_descriptions": descriptions} if descriptions else {})}
    from annotate.multilabel import MultiLabelSplit

    split = MultiLabelSplit if multi_label else LabelledSplit  # the same fields: embeddings, zero-shot scores, gold
    try:
        pool = split(*scored_split(pool_texts, scorer, root, key), pool_y)
        evaluation = (split(*scored_split(eval_texts, scorer, root, key), eval_y)
                      if eval_path is not None or holdout > 0 else None)
    except ScoringError as exc:
        raise fail(str(exc)) from None
    finally:
        scorer.close()
    if multi_label:
        _simulate_multilabel(pool, evaluation, labels, budget_list, strategies, round_size, seed, report_json,
                             {"pool": str(pool_path), "eval": str(eval_path) if eval_path else None,
                              "hypothesis_template": hypothesis_template, "method": method, "seed": seed,
                              "gold_column": gold_column})
        return
    reports = []
    for chosen in strategies:
        report = run_simulate(pool, labels, budget_list, strategy=chosen, round_size=round_size,
                              evaluation=evaluation, seed=seed, noise=noise, acceptance=acceptance,
                              config=head_config(settings, seed=seed))
        report.update({"pool": str(pool_path), "eval": str(eval_path) if eval_path else None,
                       "hypothesis_template": hypothesis_template, "method": method, "seed": seed,
                       "label_descriptions": descriptions, "bias_correction": settings.bias_correction,
                       "split": {"holdout": holdout, "pool_sample": pool_sample, "eval_sample": eval_sample,
                                 "split_seed": split_seed, "pool_rows": len(pool_texts),
                                 "eval_rows": len(eval_y) if evaluation is not None else 0}})
        reports.append(report)
        typer.echo(_render_simulation(report))
    if report_json is not None:
        payload = reports[0] if len(reports) == 1 else {**reports[0], "runs": reports}
        write_json(report_json, payload)
        png = report_json.with_suffix(".png")
        plot_curve(reports, png, title=f"{pool_path.parent.name}/{pool_path.name}: suggestion accuracy as reviews arrive")
        reliability_png = report_json.with_suffix(".reliability.png")
        plot_reliability(reports[0], reliability_png, title=f"{pool_path.name}: reliability ({reports[0]['strategy']})")
        typer.echo(f"report: {report_json}; learning curve: {png}; reliability diagram: {reliability_png}")
        if acceptance is not None:
            accept_png = report_json.with_suffix(".accept.png")
            plot_acceptance(reports, accept_png, title=f"{pool_path.parent.name}/{pool_path.name}: human share at "
                                                        f"precision >= {acceptance.precision:g}")
            typer.echo(f"human share: {accept_png}")


def _simulate_multilabel(pool, evaluation, labels, budgets, strategies, round_size, seed, report_json,
                         facts: dict) -> None:
    """``simulate --multi-label``: :func:`annotate.multilabel.simulate_multilabel` for each strategy."""
    from annotate.multilabel import render_simulation, simulate_multilabel

    reports = []
    for chosen in strategies:
        report = simulate_multilabel(pool, labels, budgets, strategy=chosen.name, round_size=round_size,
                                     evaluation=evaluation, seed=seed)
        report.update(facts)
        reports.append(report)
        typer.echo(render_simulation(report))
    if report_json is not None:
        write_json(report_json, reports[0] if len(reports) == 1 else {**reports[0], "runs": reports})
        typer.echo(f"report: {report_json}")


def _knob(entry: dict) -> str:
    """What the cross-validation chose, for one simulate row."""
    if entry.get("correction_c"):
        return f" (correction C {entry['correction_c']:g})"
    if entry["mode"] == "reviews+pseudo-labels" and entry.get("reviewed"):
        return f" (pseudo-label weight {entry['pseudo_weight']:g})"
    return ""


def _render_simulation(report: dict) -> str:
    zero = report["zero_shot"]
    lines = [f"strategy {report['strategy']}, rounds of {report['round_size']}, measured on {report['evaluated_on']} "
             f"({report['eval_size']})",
             f"zero-shot: accuracy {zero['eval_accuracy']:.4f}, macro-F1 {zero['eval_macro_f1']:.4f}, "
             f"ECE {zero['eval_calibration']['ece']:.4f}",
             *([f"zero-shot, bias-corrected over the pool: accuracy {report['corrected_zero_shot']['eval_accuracy']:.4f}, "
                f"macro-F1 {report['corrected_zero_shot']['eval_macro_f1']:.4f} "
                f"({report['corrected_zero_shot']['bias']['note']})"] if "corrected_zero_shot" in report else []),
             f"{'reviewed':>8}  {'accuracy':>8}  {'macro-F1':>8}  {'ECE':>6}  {'pending':>8}  {'reviews only':>12}  "
             "mode"]
    for e in report["curve"]:
        only = f"{e['reviews_only_eval_accuracy']:.4f}" if e["reviews_only_eval_accuracy"] is not None else "-"
        pending = f"{e['pending_accuracy']:.4f}" if e["pending_accuracy"] is not None else "-"
        lines.append(f"{e['reviewed']:>8}  {e['eval_accuracy']:>8.4f}  {e['eval_macro_f1']:>8.4f}  "
                     f"{e['eval_ece']:>6.4f}  {pending:>8}  "
                     f"{only:>12}  {e['mode']}{_knob(e)}, refit {e['refit_seconds']:.2f} s")
    lines += [_render_suspects(e) for e in report["curve"] if e.get("suspects")]
    if "accept" in zero:
        settings = zero["accept"]["accept"]
        lines.append(f"bulk acceptance at precision >= {settings['target']:g} (confidence {settings['confidence']:g}, "
                     f"{settings['scope']}): share of the records not reviewed in the loop, certification reviews so "
                     "far, real precision, best possible share, human share of the pool")
        lines.append(f"{'reviewed':>9}  {'cert.':>6}  {'share':>6}  {'precision':>9}  {'oracle':>6}  {'human':>6}")
        for name, e in [("zero-shot", zero["accept"]), *((str(e["reviewed"]), e) for e in report["curve"])]:
            a = e["accept"]
            precision = f"{a['precision']:.4f}" if a["precision"] is not None else "-"
            lines.append(f"{name:>9}  {a['certification_reviews']:>6}  {a['share']:>6.3f}  {precision:>9}  "
                         f"{a['oracle_share']:>6.3f}  {e['human_share']:>6.3f}")
    return "\n".join(lines)


def _render_suspects(entry: dict) -> str:
    """One line: the suspect detection against the flipped reviews at one budget (``simulate --noise``)."""
    s = entry["suspects"]

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    return (f"suspects at {entry['reviewed']:>5} reviews: {s['flipped']} flipped, {s['flagged']} flagged, precision "
            f"{fmt(s['precision'])}, recall {fmt(s['recall'])}, AUROC {fmt(s['auroc'])}, out-of-fold accuracy "
            f"{s['oof_accuracy']:.4f} ({s['seconds']:.1f} s)")
