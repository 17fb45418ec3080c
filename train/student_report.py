"""Everything ``train/finetune.py`` writes after training: the model directory, its ONNX graphs, and the report.

The report (``report.json``, ``report.md``, PNGs) measures the exported student as the service runs it
(:func:`service.classify.load_classifier`, ONNX Runtime, float32 and int8) on the evaluation file: accuracy,
macro-F1, per-class F1 and the confusion matrix (scikit-learn), calibration (ECE over 15 bins and a reliability
diagram, Guo et al. 2017), the training curve, size on disk, and speed against the zero-shot teacher on the same
texts in the same run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

logger = logging.getLogger("train.finetune")


def write_outputs(model, tokenizer, output_dir: Path, run: dict, *, eval_set, max_length: int, teacher: dict,
                  speed_texts: int, calibration_texts: list[str] | None = None) -> dict:
    """Save the student, export ``model.onnx`` and ``model.int8.onnx``, evaluate, and write the report."""
    from service.quantization import build_int8
    from train.quantize import build_spec
    from train.students import export_onnx, save_student, size_facts

    output_dir = Path(output_dir)
    save_student(model, output_dir, kind=run["student"], labels=run["labels"], multi_label=run["multi_label"],
                 tokenizer=tokenizer, max_length=max_length)
    fp32 = export_onnx(model, output_dir / "model.onnx")
    texts = calibration_texts or (eval_set[0][:256] if eval_set else ["calibration text"])
    spec, measured = build_spec(fp32, tokenizer, texts, max_length=max_length, timing_examples=256)
    spec.save(output_dir)
    ort_mode = spec.engines["onnxruntime"] if spec.engines["onnxruntime"] != "none" else "dynamic"
    build_int8(fp32, output_dir / "model.int8.onnx", ort_mode, spec)
    run["quantization"] = {"engines": spec.engines, **measured, "model.int8.onnx": ort_mode}
    run["size"] = size_facts(model, output_dir)
    plots = {"training_curve": str(plot_training(run["history"], output_dir / "training_curve.png"))}
    if eval_set is not None:
        texts, gold = eval_set
        run["evaluation"] = {}
        for quantization in ("none", "auto"):
            run["evaluation"]["fp32" if quantization == "none" else "int8"] = evaluate(
                output_dir, texts, gold, run["labels"], run["multi_label"], quantization=quantization)
        plots["confusion_matrix"] = str(plot_confusion(run["evaluation"]["int8"], run["labels"],
                                                       output_dir / "confusion_matrix.png"))
        plots["reliability"] = str(plot_reliability(run["evaluation"]["int8"], output_dir / "reliability.png"))
        run["speed"] = speed_against_teacher(output_dir, texts[:speed_texts], run["labels"], run["multi_label"],
                                             teacher)
        for result in run["evaluation"].values():
            result.pop("_probabilities", None)
            result.pop("_gold", None)
    run["plots"] = plots
    (output_dir / "report.json").write_text(json.dumps(run, indent=2, default=float), encoding="utf-8")
    (output_dir / "report.md").write_text(render(run), encoding="utf-8")
    return run


def evaluate(model_dir: Path, texts: list[str], gold: list, labels: list[str], multi_label: bool, *,
             quantization: str) -> dict:
    """Metrics of the exported student on ONNX Runtime (``quantization`` ``none``: float32; ``auto``: int8)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    from service.calibration import expected_calibration_error
    from service.classify import load_classifier
    from service.config import Settings
    from service.sources import default_cache_dir

    classifier = load_classifier("student", str(model_dir), engine="onnxruntime", quantization=quantization,
                                 cache_dir=default_cache_dir(), batch_size=Settings().batch_size)
    try:
        began = time.perf_counter()
        probabilities = np.concatenate([classifier.probabilities(texts[i:i + 512]) for i in range(0, len(texts), 512)])
        seconds = time.perf_counter() - began
        int8 = classifier.engine.int8
    finally:
        classifier.close()
    if multi_label:
        gold_m = np.stack(gold)
        predicted = (probabilities >= 0.5).astype(int)
        per_class = f1_score(gold_m, predicted, average=None, zero_division=0)
        result = {"exact_match": float(np.mean(np.all(predicted == gold_m, axis=1))),
                  "micro_f1": float(f1_score(gold_m, predicted, average="micro", zero_division=0)),
                  "macro_f1": float(f1_score(gold_m, predicted, average="macro", zero_division=0))}
    else:
        gold_a = np.asarray(gold)
        predicted = probabilities.argmax(axis=1)
        per_class = f1_score(gold_a, predicted, labels=list(range(len(labels))), average=None, zero_division=0)
        result = {"accuracy": float(accuracy_score(gold_a, predicted)),
                  "macro_f1": float(f1_score(gold_a, predicted, labels=list(range(len(labels))), average="macro",
                                             zero_division=0)),
                  "ece": float(expected_calibration_error(probabilities, gold_a)),
                  "confusion": confusion_matrix(gold_a, predicted, labels=list(range(len(labels)))).tolist(),
                  "_probabilities": probabilities, "_gold": gold_a}
    result.update(n=len(texts), engine="onnxruntime", int8=int8, texts_per_s=round(len(texts) / seconds, 1),
                  per_class_f1={label: float(f) for label, f in zip(labels, per_class)})
    logger.info("student (%s): %s", int8, {k: v for k, v in result.items() if not k.startswith("_")
                                           and k not in ("confusion", "per_class_f1")})
    return result


def speed_against_teacher(model_dir: Path, texts: list[str], labels: list[str], multi_label: bool, teacher: dict) -> dict:
    """Texts/s of the student (int8 and float32, on the engine ``auto`` picks) and of the zero-shot teacher on the
    same texts, measured here one after the other: the teacher as configured (over HTTP when a URL was given,
    else in-process) and each method of ``teacher["compare_methods"]``. Both get 64 texts a call (as
    ``annotate`` sends them) and the service's forward-pass size (``Settings().batch_size`` rows: texts for the
    student, (text, label) pairs for the NLI teacher), so neither pays padding the service would not."""
    from pool.scorers import teacher_scores
    from service.classify import load_classifier
    from service.config import Settings
    from service.sources import default_cache_dir

    out = {"texts": len(texts)}
    for quantization in ("auto", "none"):
        classifier = load_classifier("student", str(model_dir), engine="auto", quantization=quantization,
                                     cache_dir=default_cache_dir(), batch_size=Settings().batch_size)
        try:
            classifier.probabilities(texts[:64])  # warm-up
            began = time.perf_counter()
            for i in range(0, len(texts), 64):
                classifier.probabilities(texts[i:i + 64])
            seconds = time.perf_counter() - began
            key = "student_int8" if quantization == "auto" else "student_fp32"
            out[key] = {"texts_per_s": round(len(texts) / seconds, 1), "engine": classifier.engine.name,
                        "int8": classifier.engine.int8}
        finally:
            classifier.close()
    out["teachers"] = []
    methods = list(dict.fromkeys([teacher["method"], *teacher.get("compare_methods", [])]))
    for method in methods:
        options = dict(template=teacher["template"], multi_label=multi_label, url=teacher["url"],
                       model=teacher["model"], method=method, engine=teacher["engine"])
        _, agent, seconds = teacher_scores(texts, labels, **options)
        rate = round(len(texts) / seconds, 1)
        out["teachers"].append({"method": method or "service default", "agent": agent, "texts_per_s": rate,
                                "labels": len(labels),
                                "ratio_int8": round(out["student_int8"]["texts_per_s"] / rate, 2),
                                "ratio_fp32": round(out["student_fp32"]["texts_per_s"] / rate, 2)})
    out["teacher"] = out["teachers"][0]
    out["ratio_int8"], out["ratio_fp32"] = out["teacher"]["ratio_int8"], out["teacher"]["ratio_fp32"]
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(history: dict, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if history["train_loss"]:
        steps, losses = zip(*history["train_loss"])
        ax.plot(steps, losses, label="train loss (mean of 10 steps)")
    if history["valid_loss"]:
        steps, losses = zip(*history["valid_loss"])
        ax.plot(steps, losses, "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(result: dict, labels: list[str], path: Path) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay(np.asarray(result["confusion"]), display_labels=labels).plot(ax=ax, colorbar=False)
    ax.set_title(f"student, accuracy {result['accuracy']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(result: dict, path: Path, bins: int = 15) -> Path:
    """Reliability diagram of the top score (accuracy per confidence bin against the diagonal)."""
    plt = _plt()
    probabilities, gold = result["_probabilities"], result["_gold"]
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == gold
    edges = np.linspace(0, 1, bins + 1)
    centers, accuracy, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            centers.append(confidence[inside].mean())
            accuracy.append(correct[inside].mean())
            counts.append(int(inside.sum()))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.plot(centers, accuracy, "o-")
    ax.set_xlabel("confidence (top score)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE {result['ece']:.3f} ({bins} bins)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(run: dict) -> str:
    """The Markdown report."""
    lines = [f"# Student: {run['student']} ({run['objective']})", "", f"`{run['command']}`", "",
             f"- Labels: {', '.join(run['labels'])}{' (multi-label)' if run['multi_label'] else ''}",
             f"- Data: {run['data']}", f"- Teacher: {run['teacher'] or 'scores from the exports'}",
             f"- Training: {run['history']['steps_done']} steps ({run['history']['epochs_done']} epochs) in "
             f"{run['history']['seconds']} s on {run['device']}; loss {run['history'].get('initial_train_loss', float('nan')):.4f} "
             f"-> best validation {run['history']['best_valid_loss']:.4f}"
             + (" (early stopped)" if run["history"]["early_stopped"] else ""),
             f"- Size: {run['size']}", f"- int8: {run['quantization']}", ""]
    if run.get("evaluation"):
        lines += ["| graph | n | accuracy | macro-F1 | ECE | texts/s (ONNX Runtime) |", "|---|---|---|---|---|---|"]
        for name, r in run["evaluation"].items():
            lines.append(f"| {name} | {r['n']} | {r.get('accuracy', r.get('exact_match', 0)):.4f} | "
                         f"{r['macro_f1']:.4f} | {r.get('ece', float('nan')):.4f} | {r['texts_per_s']} |")
        lines += ["", "Per-class F1 (int8): " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                            run["evaluation"]["int8"]["per_class_f1"].items()), ""]
    if run.get("speed"):
        s = run["speed"]
        lines += [f"Speed on {s['texts']} evaluation texts, measured in one run (texts/s): student int8 "
                  f"{s['student_int8']['texts_per_s']} ({s['student_int8']['engine']}), fp32 "
                  f"{s['student_fp32']['texts_per_s']} ({s['student_fp32']['engine']}).", "",
                  "| zero-shot teacher | labels | texts/s | student int8 × | student fp32 × |", "|---|---|---|---|---|"]
        for t in s["teachers"]:
            lines.append(f"| `{t['agent']}` | {t['labels']} | {t['texts_per_s']} | **{t['ratio_int8']}** | "
                         f"{t['ratio_fp32']} |")
        lines.append("")
    for name, path in run.get("plots", {}).items():
        lines.append(f"![{name}]({Path(path).name})")
    return "\n".join(lines) + "\n"


def remeasure_speed(student_dirs: list[Path], texts: list[str], teacher: dict, command: str) -> list[dict]:
    """Measure :func:`speed_against_teacher` again for several trained students, one after the other in this
    process (so their ratios come from one run on one machine state), and rewrite each ``report.json`` /
    ``report.md``. Returns the updated runs.

    Raises:
        FileNotFoundError: a directory has no ``report.json`` (not written by ``train/finetune.py``).
    """
    directories = [Path(d) for d in student_dirs]
    for directory in directories:  # all checked before any is measured or rewritten
        if not (directory / "report.json").is_file():
            raise FileNotFoundError(f"{directory} has no report.json: not a train/finetune.py output directory")
    runs = []
    for directory in directories:
        report = directory / "report.json"
        run = json.loads(report.read_text(encoding="utf-8"))
        run["speed"] = {**speed_against_teacher(directory, texts, run["labels"], run["multi_label"], teacher),
                        "command": command}
        report.write_text(json.dumps(run, indent=2, default=float), encoding="utf-8")
        (directory / "report.md").write_text(render(run), encoding="utf-8")
        runs.append(run)
    return runs


app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command()
def speed(
    student_dirs: Annotated[list[Path], typer.Argument(help="Output directories of train/finetune.py.")],
    eval_file: Annotated[Path, typer.Option("--eval", help="JSONL of texts to time on (the evaluation file).")],
    eval_text_field: Annotated[Optional[list[str]], typer.Option(help="Text field(s), joined by a space "
                                                                 "(default: text).")] = None,
    speed_texts: Annotated[int, typer.Option(min=1, help="Texts timed.")] = 1000,
    teacher_url: Annotated[Optional[str], typer.Option(help="Running zero-shot service (else in-process).")] = None,
    teacher_model: Annotated[str, typer.Option(help="In-process teacher: NLI model id.")] = "default",
    teacher_method: Annotated[Optional[str], typer.Option(help="Teacher method (default: the service's).")] = None,
    compare_method: Annotated[Optional[list[str]], typer.Option(help="Other methods timed; repeatable.")] = None,
    teacher_engine: Annotated[str, typer.Option(help="In-process teacher engine.")] = "auto",
    hypothesis_template: Annotated[str, typer.Option(help="Teacher's template.")] = "This text is about {}.",
) -> None:
    """Re-measure the speed of trained students against the zero-shot teacher, all in one run, and rewrite their
    reports (``python -m train.student_report STUDENT_DIR... --eval FILE``)."""
    from train.evaluate import read_labelled

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not eval_file.is_file():
        typer.echo(f"error: --eval {eval_file} not found", err=True)
        raise typer.Exit(2)
    missing = [d for d in student_dirs if not (d / "report.json").is_file()]
    if missing:
        typer.echo(f"error: {missing[0]} has no report.json: not a train/finetune.py output directory", err=True)
        raise typer.Exit(2)
    fields = tuple(eval_text_field or ["text"])
    try:
        texts, _ = read_labelled(eval_file, fields, speed_texts)
    except (ValueError, KeyError) as exc:
        typer.echo(f"error: --eval {eval_file} is not JSONL with {'/'.join(fields)} and label fields ({exc})", err=True)
        raise typer.Exit(2) from None
    if not texts:
        typer.echo(f"error: --eval {eval_file} holds no texts", err=True)
        raise typer.Exit(2)
    teacher = dict(url=teacher_url, model=teacher_model, method=teacher_method, engine=teacher_engine,
                   template=hypothesis_template, compare_methods=compare_method or [])
    try:
        runs = remeasure_speed(student_dirs, texts, teacher, "python -m train.student_report " + " ".join(sys.argv[1:]))
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for directory, run in zip(student_dirs, runs):
        s = run["speed"]
        typer.echo(f"{directory}: student int8 {s['student_int8']['texts_per_s']} texts/s "
                   f"({s['student_int8']['engine']}); " + ", ".join(
                       f"x{t['ratio_int8']} {t['method']}" for t in s["teachers"]))


if __name__ == "__main__":
    app()
