"""Fit the zero-shot methods' calibrations (temperature, Platt scale/bias, ensemble weight) and store them.

The calibration set is kept apart from every test split the project reports: SST-2 validation
(sentiment, 2 labels) and emotion validation (6 labels), each with two hypothesis templates. AG News
is not used at all, so AG News numbers measure how a calibration transfers to an unseen task.
Writes ``nli-<fp>.json``, ``embedding-<fp>.json`` and ``ensemble-<fp>-<fp>.json`` (see
:mod:`service.calibration`) into ``--output-dir`` - by default the embedded directory
``service/models/calibrations``, so the shipped models carry them.

Example::

    python -m train.calibrate --data-dir ../shared/data
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from tqdm.auto import tqdm

from service.calibration import (
    Calibration,
    calibration_key,
    embedded_calibration_dir,
    expected_calibration_error,
    fit_binary,
    fit_ensemble,
    fit_temperature,
    negative_log_likelihood,
)
from train.evaluate import EMOTION_LABELS, ZeroShotTask, read_labelled

logger = logging.getLogger("train.calibrate")
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0], rich_markup_mode=None)

SST2_LABELS = ("negative", "positive")


def calibration_tasks(data_dir: Path) -> list[ZeroShotTask]:
    """SST-2 validation and emotion validation, two templates each (files missing are skipped with a warning)."""
    sst2 = Path(data_dir) / "classification" / "sst2" / "validation.jsonl"
    emotion = Path(data_dir) / "classification" / "emotion" / "validation.jsonl"
    sst2_labels = {label: label for label in SST2_LABELS}
    emotion_labels = {label: label for label in EMOTION_LABELS}
    tasks = [
        ZeroShotTask("sst2", sst2, "The sentiment of this text is {}.", sst2_labels),
        ZeroShotTask("sst2", sst2, "This text is {}.", sst2_labels),
        ZeroShotTask("emotion_validation", emotion, "This person feels {}.", emotion_labels),
        ZeroShotTask("emotion_validation", emotion, "This text is about {}.", emotion_labels),
    ]
    for task in tasks:
        if not task.path.is_file():
            logger.warning("calibration file %s missing, skipped", task.path)
    return [t for t in tasks if t.path.is_file()]


@dataclass
class TaskOutputs:
    """One task's gold labels and each method's raw outputs and seconds (see ``ZeroShotMethod.raw``)."""

    task: ZeroShotTask
    gold: np.ndarray
    raw: dict[str, object]
    seconds: dict[str, float]


def collect_raw(methods: dict, task: ZeroShotTask, *, limit: int | None = None, chunk: int = 256,
                roles: tuple[str, ...] = ("nli", "embedding")) -> TaskOutputs:
    """Run each method in ``roles`` over a task's texts, in chunks, keeping raw outputs and wall time.

    The ensemble needs no run of its own: its raw output is the pair of the two others'.
    """
    texts, gold_names = read_labelled(task.path, task.text_fields, limit)
    names = list(task.verbalizer)
    candidates = [task.verbalizer[g] for g in names]
    gold = np.array([names.index(g) for g in gold_names])
    raw: dict[str, object] = {}
    seconds: dict[str, float] = {}
    for role in roles:
        parts = []
        started = time.perf_counter()
        for start in tqdm(range(0, len(texts), chunk), desc=f"{role} {task.dataset} {task.template!r}",
                          unit="chunk", leave=False):
            parts.append(methods[role].raw(texts[start:start + chunk], candidates, hypothesis_template=task.template))
        seconds[role] = time.perf_counter() - started
        raw[role] = np.concatenate(parts)
    return TaskOutputs(task=task, gold=gold, raw=raw, seconds=seconds)


def _metrics(probabilities: list[np.ndarray], gold: list[np.ndarray]) -> dict:
    n = sum(len(g) for g in gold)
    return {"ece": round(sum(expected_calibration_error(p, g) * len(g) for p, g in zip(probabilities, gold)) / n, 4),
            "nll": round(sum(negative_log_likelihood(p, g) * len(g) for p, g in zip(probabilities, gold)) / n, 4)}


def fit_calibrations(methods: dict, outputs: list[TaskOutputs]) -> dict[str, Calibration]:
    """Fit each method's calibration on the collected outputs; metrics are measured on the same set.

    Order matters: the ensemble is fitted on the two methods' *calibrated* probabilities.
    """
    from service.ensemble import combine, logit

    gold = [o.gold for o in outputs]
    fitted_on = {"tasks": [{"dataset": o.task.dataset, "file": o.task.path.name, "template": o.task.template,
                            "labels": list(o.task.verbalizer.values()), "n": int(len(o.gold))} for o in outputs]}
    result: dict[str, Calibration] = {}
    probabilities: dict[str, list[np.ndarray]] = {}
    multi_label: dict[str, list[np.ndarray]] = {}
    for role in ("nli", "embedding"):
        method = methods[role]
        raw = [o.raw[role] for o in outputs]
        before = [method.probabilities(r, multi_label=False) for r in raw]
        # the single-label raw values: entailment logits (nli) or cosine similarities (embedding)
        single = [r[..., method.entailment_id] if role == "nli" else r for r in raw]
        binary = raw
        temperature = fit_temperature(single, gold)
        # NLI multi-label keeps the pipeline's entailment-vs-contradiction probability: a Platt fit on
        # single-label data learns "is this the one gold label", not "does this label hold", and
        # squashes every score under 0.5. Cosine similarities have no such meaning to keep.
        scale, bias = (1.0, 0.0) if role == "nli" else fit_binary(binary, gold)
        calibration = Calibration(temperature=temperature, binary_scale=scale, binary_bias=bias, fitted_on=fitted_on)
        method.calibration = calibration
        probabilities[role] = [method.probabilities(r, multi_label=False) for r in raw]
        multi_label[role] = [method.probabilities(r, multi_label=True) for r in raw]
        result[role] = Calibration(**{**calibration.__dict__, "metrics": {
            "before": _metrics(before, gold), "after": _metrics(probabilities[role], gold)}})
        logger.info("%s: T=%.4f scale=%.3f bias=%.3f ECE %.4f -> %.4f", role, temperature, scale, bias,
                    result[role].metrics["before"]["ece"], result[role].metrics["after"]["ece"])
    weight, temperature = fit_ensemble(probabilities["nli"], probabilities["embedding"], gold)
    unfitted = Calibration()
    before = [combine(a, b, unfitted, multi_label=False) for a, b in zip(probabilities["nli"], probabilities["embedding"])]
    z = [weight * logit(a) + (1 - weight) * logit(b) for a, b in zip(multi_label["nli"], multi_label["embedding"])]
    scale, bias = fit_binary(z, gold)
    ensemble = Calibration(temperature=temperature, binary_scale=scale, binary_bias=bias, weight=weight,
                           fitted_on=fitted_on)
    after = [combine(a, b, ensemble, multi_label=False) for a, b in zip(probabilities["nli"], probabilities["embedding"])]
    result["ensemble"] = Calibration(**{**ensemble.__dict__, "metrics": {"before": _metrics(before, gold),
                                                                         "after": _metrics(after, gold)}})
    logger.info("ensemble: weight(nli)=%.2f T=%.4f ECE %.4f -> %.4f", weight, temperature,
                result["ensemble"].metrics["before"]["ece"], result["ensemble"].metrics["after"]["ece"])
    return result


def write_calibrations(calibrations: dict[str, Calibration], models: dict, output_dir: Path) -> list[Path]:
    """Write ``<method>-<fingerprints>.json`` files; returns their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    fingerprints = {role: m.info["fingerprint"] for role, m in models.items()}
    ids = {role: m.source.model_id for role, m in models.items()}
    paths = []
    for method, calibration in calibrations.items():
        roles = ["nli", "embedding"] if method == "ensemble" else [method]
        path = output_dir / f"{calibration_key(method, *(fingerprints[r] for r in roles))}.json"
        path.write_text(calibration.to_json(method=method, models={r: {"model_id": ids[r], "fingerprint": fingerprints[r]}
                                                                    for r in roles}), encoding="utf-8")
        paths.append(path)
    return paths


@app.command()
def main(
    model: Annotated[str, typer.Option(help="NLI model (default: the embedded teacher).")] = "default",
    embedding_model: Annotated[str, typer.Option(help="Sentence encoder (default: packaged all-MiniLM-L6-v2).")] = "default",
    data_dir: Annotated[Path, typer.Option(help="The shared data folder (holds classification/).")] = Path("../shared/data"),
    output_dir: Annotated[Optional[Path], typer.Option(help="Where the calibration files go "
                                                       "(default: the embedded service/models/calibrations).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="First N texts of each calibration file.")] = 1000,
    engine: Annotated[str, typer.Option(help="auto, deepsparse, onnxruntime or torch.")] = "onnxruntime",
) -> None:
    """Fit temperature, Platt scale/bias and ensemble weight on SST-2 + emotion validation; write them."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.config import Settings
    from service.loader import load_methods

    tasks = calibration_tasks(data_dir)
    if not tasks:
        typer.echo(f"error: no calibration file (sst2/validation.jsonl, emotion/validation.jsonl) under "
                   f"{data_dir}/classification", err=True)
        raise typer.Exit(1)
    served = load_methods(Settings(model=model, embedding_model=embedding_model, engine=engine, calibrate=False,
                                   batch_size=64))
    try:
        outputs = [collect_raw(served.methods, task, limit=limit) for task in tasks]
        calibrations = fit_calibrations(served.methods, outputs)
        paths = write_calibrations(calibrations, served.models, output_dir or embedded_calibration_dir())
    finally:
        served.close()
    typer.echo("| method | temperature | weight (nli) | ECE before | ECE after | NLL before | NLL after |")
    typer.echo("|---|---|---|---|---|---|---|")
    for method, c in calibrations.items():
        weight = f"{c.weight:.2f}" if method == "ensemble" else "-"
        typer.echo(f"| {method} | {c.temperature:.4f} | {weight} | {c.metrics['before']['ece']:.4f} | "
                   f"{c.metrics['after']['ece']:.4f} | {c.metrics['before']['nll']:.4f} | {c.metrics['after']['nll']:.4f} |")
    for path in paths:
        typer.echo(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(app())
