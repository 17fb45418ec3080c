"""The last stage of :mod:`train.sparsify`: quantization calibration, the accuracy of every variant, the card.

Every variant is evaluated through the service's own loading and scoring code (the numbers are the served
numbers), on the same inputs, in one run:

- the dense teacher (float32, ONNX Runtime);
- the pruned model in float32 (ONNX Runtime; DeepSparse runs the same graph, so the same predictions);
- the pruned model in int8: ``qdq`` and ``dynamic`` on ONNX Runtime, ``integer`` on DeepSparse.

Metrics: accuracy on MNLI dev-matched (3 classes) and zero-shot accuracy / macro-F1 on the AG News test split
with ``This text is about {}.``. The accuracy budget of the sparse issue is at most 1.0 point below the dense
teacher on both.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("train.sparsify")

#: Most a shipped variant may lose against the dense teacher, in accuracy points, on each metric.
BUDGET_POINTS = 1.0
AG_NEWS_TEMPLATE = "This text is about {}."


def variants(dense_path: Path, sparse_dir: Path, spec_engines: dict[str, str]) -> list[dict]:
    """The evaluated variants: name, model, engine, int8 form."""
    return [
        {"name": "dense fp32", "model": str(dense_path), "engine": "onnxruntime", "int8": "none"},
        {"name": "sparse fp32", "model": str(sparse_dir), "engine": "onnxruntime", "int8": "none"},
        {"name": "sparse int8 qdq (ONNX Runtime)", "model": str(sparse_dir), "engine": "onnxruntime", "int8": "qdq"},
        {"name": "sparse int8 dynamic (ONNX Runtime)", "model": str(sparse_dir), "engine": "onnxruntime",
         "int8": "dynamic"},
        {"name": "sparse int8 integer (DeepSparse)", "model": str(sparse_dir), "engine": "deepsparse",
         "int8": "integer"},
    ]


def nli_accuracy(classifier, path: Path, limit: int | None = None, chunk: int = 2048) -> dict:
    """Accuracy of a served NLI classifier (:class:`service.zeroshot.ZeroShotClassifier`) on a 3-class eval file."""
    from train.nli_data import NLI_CLASSES, read_pairs

    pairs = read_pairs(path)[:limit]
    label2id = {c: i for i, c in enumerate(NLI_CLASSES)}
    order = {name: index for name, index in _model_label_order(classifier).items()}
    predictions = []
    began = time.perf_counter()
    for start in range(0, len(pairs), chunk):
        part = pairs[start:start + chunk]
        logits = classifier.logits([p.premise for p in part], [p.hypothesis for p in part])
        predictions.extend(int(i) for i in logits.argmax(axis=1))
    seconds = time.perf_counter() - began
    gold = np.array([order[label2id[p.label]] for p in pairs])
    return {"n": len(pairs), "accuracy": float(np.mean(np.array(predictions) == gold)),
            "pairs_per_s": round(len(pairs) / seconds, 1)}


def _model_label_order(classifier) -> dict[int, int]:
    """Map :data:`train.nli_data.NLI_CLASSES` ids to the model's class ids (by the label names of its head)."""
    from train.nli_data import NLI_CLASSES

    return {i: {"contradiction": classifier.contradiction_id, "entailment": classifier.entailment_id}.get(
        c, 3 - classifier.contradiction_id - classifier.entailment_id) for i, c in enumerate(NLI_CLASSES)}


def evaluate_variants(items: list[dict], data_dir: Path, cache_dir: Path, *, limit: int | None = None) -> list[dict]:
    """MNLI-m accuracy and AG News zero-shot accuracy / macro-F1 of each variant, in one run."""
    from service.config import Settings
    from service.loader import load_methods
    from train.evaluate import AG_NEWS_LABELS, ZeroShotTask, evaluate_task

    mnli = Path(data_dir) / "nli" / "eval" / "mnli_dev_matched.jsonl"
    ag = ZeroShotTask("ag_news", Path(data_dir) / "classification" / "ag_news" / "test.jsonl", AG_NEWS_TEMPLATE,
                      {label: label for label in AG_NEWS_LABELS}, ("title", "description"))
    results = []
    for item in items:
        settings = Settings(model=item["model"], embedding_model="none", method="nli", engine=item["engine"],
                            quantization=item["int8"], batch_size=64, batch_wait_ms=0, calibrate=False,
                            cache_dir=cache_dir)
        served = load_methods(settings)
        try:
            classifier = served.methods["nli"]
            model = served.models["nli"]
            row = {**item, "engine_used": model.engine.name, "int8_used": model.engine.int8,
                   "sparsity_onnx": model.info.get("sparsity"), "quantization_onnx": model.info.get("quantization"),
                   "mnli_m": nli_accuracy(classifier, mnli, limit), "ag_news": evaluate_task(classifier, ag, limit=limit)}
        finally:
            served.close()
        logger.info("%s: MNLI-m %.4f, AG News %.4f", item["name"], row["mnli_m"]["accuracy"],
                    row["ag_news"]["accuracy"])
        results.append(row)
    dense = results[0]
    for row in results:
        row["delta_points"] = {"mnli_m": round(100 * (row["mnli_m"]["accuracy"] - dense["mnli_m"]["accuracy"]), 2),
                               "ag_news": round(100 * (row["ag_news"]["accuracy"] - dense["ag_news"]["accuracy"]), 2)}
        row["within_budget"] = all(d >= -BUDGET_POINTS for d in row["delta_points"].values())
    return results


def finalize(output_dir: Path, dense, info: dict, *, data_dir: Path, work_dir: Path, cache_dir: Path,
             calibration_pairs: int, evaluate: bool, eval_limit: int | None, seed: int) -> dict:
    """Calibrate int8, evaluate every variant, write ``metrics.json`` and the card ``README.md`` into ``output_dir``."""
    from transformers import AutoTokenizer

    from service.onnx_export import inspect_onnx, onnx_for
    from service.sources import resolve_model
    from train.quantize import build_spec, nli_calibration_pairs

    source = resolve_model(str(output_dir), cache_dir=cache_dir)
    fp32 = onnx_for(source, cache_dir)
    info["onnx"] = {"fp32": inspect_onnx(fp32)}
    logger.info("exported ONNX: measured sparsity of the Linear weights %.4f", info["onnx"]["fp32"]["sparsity"])
    pairs = nli_calibration_pairs(data_dir, calibration_pairs, seed)
    spec, measured = build_spec(fp32, AutoTokenizer.from_pretrained(source.path), pairs)
    spec.save(output_dir)
    info["quantization"] = {"engines": spec.engines, "calibration": spec.calibration, **measured}
    for mode in ("qdq", "integer", "dynamic"):
        info["onnx"][mode] = inspect_onnx(onnx_for(source, cache_dir, int8=mode))
    if evaluate:
        info["evaluation"] = evaluate_variants(variants(dense.path, output_dir, spec.engines), data_dir, cache_dir,
                                               limit=eval_limit)
    (output_dir / "metrics.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    write_card(output_dir, info)
    (Path(work_dir) / "metrics.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    logger.info("wrote %s", output_dir)
    return info


def write_card(output_dir: Path, info: dict) -> None:
    """README.md of the compact model directory; every number comes from ``info`` (its metrics.json)."""
    hp, train = info["hyperparameters"], info["train"]
    lines = [
        "---", "license: other", "pipeline_tag: zero-shot-classification", "language: en", "---", "",
        f"# {info['name']}", "",
        f"The NLI teacher `{info['teacher']}` pruned to {hp['sparsity']:.0%} unstructured sparsity in the encoder's "
        "Linear layers by gradual magnitude pruning (cubic schedule, Zhu & Gupta 2017) with distillation from the "
        "dense teacher (Prune Once for All, Zafrir et al. 2021), built by `train/sparsify.py` of this project.", "",
        f"- Measured sparsity of the Linear weights in the exported ONNX graph: {info['onnx']['fp32']['sparsity']:.4f} "
        f"(training-time masks: {train['measured_sparsity']:.4f}).",
        f"- Stored compactly (`sparse_weights.safetensors`, bitmask + fp16 values): {info['storage']['stored_bytes'] / 1e6:.1f} MB; "
        f"the word embeddings are shared with the dense teacher (`sparse_model.json`).",
        f"- Training: {train['pairs_seen']:,} pairs in {train['step']:,} steps, {train['seconds'] / 60:.1f} min on "
        f"{info['device']}" + (" (stopped by the time budget)" if train.get("stopped_by_budget") else "") + ".",
        f"- int8: DeepSparse runs the `{info['quantization']['engines']['deepsparse']}` form, ONNX Runtime "
        f"`{info['quantization']['engines']['onnxruntime']}` (rows/s measured on ONNX Runtime here: "
        f"{info['quantization']['onnxruntime_rows_per_s']}); activation ranges: "
        f"{info['quantization']['calibration']['method']} on {info['quantization']['calibration']['examples']} NLI "
        "training pairs (`quantization.json`).", "",
    ]
    if info.get("evaluation"):
        lines += ["## Accuracy of every variant (one run)", "",
                  "| variant | engine | MNLI-m acc | AG News acc | AG News macro-F1 | Δ MNLI-m (pts) | Δ AG News (pts) | "
                  f"within {BUDGET_POINTS} pt |", "|---|---|---|---|---|---|---|---|"]
        for row in info["evaluation"]:
            lines.append(f"| {row['name']} | {row['engine_used']} | {row['mnli_m']['accuracy']:.4f} | "
                         f"{row['ag_news']['accuracy']:.4f} | {row['ag_news']['macro_f1']:.4f} | "
                         f"{row['delta_points']['mnli_m']:+.2f} | {row['delta_points']['ag_news']:+.2f} | "
                         f"{'yes' if row['within_budget'] else 'no'} |")
        lines += ["", f"MNLI dev-matched: {info['evaluation'][0]['mnli_m']['n']} pairs; AG News test: "
                  f"{info['evaluation'][0]['ag_news']['n']} texts, `{AG_NEWS_TEMPLATE}`, labels World, Sports, "
                  "Business, Sci/Tech.", ""]
    lines += ["## Hyperparameters", "", "```json", json.dumps(hp, indent=2), "```", "",
              "Reproduce: `" + info["command"] + "`", ""]
    (Path(output_dir) / "README.md").write_text("\n".join(lines), encoding="utf-8")
