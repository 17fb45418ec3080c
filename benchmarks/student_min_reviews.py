"""How many reviews per label before a student trained on them alone beats the zero-shot teacher (issue 24 §5).

README step 5 trains ``python train/finetune.py --train reviewed.jsonl --student transformer --objective hard``:
the default student of ``train/finetune.py`` (the packaged MiniLM encoder with a classification head) on the
reviewed records only. A student trained on 40 reviews (10 a label) served near-uniform scores. This script
measures, per task, for k reviews per label:

- the reviews: a random stratified sample of k records per label of the task's pool (seed ``s``), gold labels
  standing in for reviewers, written as an export file and read back with ``train.student_data.read_exports``
  (what ``finetune.py --train`` reads);
- the student: trained exactly as ``finetune.py`` trains it, in this process, with ``finetune.py``'s own defaults
  read from its command's signature (epochs, batch size, learning rate, warm-up, validation fraction, patience,
  maximum length, seed) and ``--objective hard``; ``--max-steps`` caps the steps (off by default: the defaults
  already give few steps at these sizes, which is the point);
- evaluation on a fixed random sample of the task's test split (``--eval-rows``, the same rows for every k and
  for the teacher), float32 torch logits (the served int8 graph differs by well under a point on these students,
  see docs/students.md): accuracy, macro-F1, mean top probability and mean normalized entropy
  (``H(p) / log K``; 1.0 is uniform);
- the teacher: the zero-shot embedding method of the packaged encoder (the pool's suggestions; the stronger
  zero-shot method on AG News in docs/methods.md) on the same rows, with the task's template.

The minimum of a task is the smallest k at which the student's accuracy is above the teacher's (every seed) and
its scores are not near-uniform (mean normalized entropy below ``--uniform-entropy``, 0.9 by default: at 0.9
four labels' top probability is still about 0.4). The figure for ``train/finetune.py``'s warning is the largest
minimum over the tasks. The JSON report holds every run, the settings, the command, the CPU model and flags and
the load average before and after each run.

Example (both tasks, about 25 minutes on a 2-core CPU under load)::

    python benchmarks/student_min_reviews.py --data-dir ../shared/data --tasks ag_news,emotion \\
        --k 5,10,25,50,100 --eval-rows 1000 --output benchmarks/results/student_min_reviews/report.json
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import typer

from benchmarks.machine import cpu_facts  # noqa: E402
from benchmarks.tiny_students import TASKS  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0], pretty_exceptions_enable=False)


def finetune_defaults() -> dict:
    """The defaults of ``train/finetune.py``'s command (its signature), so this benchmark follows the CLI."""
    from train import finetune

    return {name: p.default for name, p in inspect.signature(finetune.main).parameters.items()}


def read_task(data_dir: Path, task: str, split: str) -> tuple[list[str], list[str]]:
    """Texts and candidate-label gold of a task's ``pool`` or ``eval`` file (``benchmarks.tiny_students.TASKS``)."""
    spec = TASKS[task]
    path, fields = spec[split]
    texts, gold = [], []
    with (data_dir / "classification" / path).open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            texts.append(" ".join(str(row[f]) for f in fields if row.get(f)))
            gold.append(spec["map"].get(row["label"], row["label"]))
    return texts, gold


def stratified(gold: list[str], labels: list[str], k: int, seed: int) -> list[int]:
    """``k`` random row indices per label (``numpy.random.default_rng(seed)``), sorted.

    Raises:
        ValueError: a label has fewer than ``k`` rows.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for label in labels:
        candidates = [i for i, g in enumerate(gold) if g == label]
        if len(candidates) < k:
            raise ValueError(f"label {label!r} has {len(candidates)} rows, fewer than k={k}")
        rows += rng.choice(candidates, size=k, replace=False).tolist()
    return sorted(rows)


def scores_summary(probabilities: np.ndarray, gold: np.ndarray) -> dict:
    """Accuracy, macro-F1 (scikit-learn), mean top probability and mean normalized entropy of ``(N, K)`` rows."""
    from sklearn.metrics import f1_score

    k = probabilities.shape[1]
    p = np.clip(probabilities, 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(1) / np.log(k)
    predicted = probabilities.argmax(1)
    return {"accuracy": float((predicted == gold).mean()),
            "macro_f1": float(f1_score(gold, predicted, average="macro", labels=list(range(k)), zero_division=0)),
            "mean_top_probability": float(probabilities.max(1).mean()),
            "mean_normalized_entropy": float(entropy.mean())}


def train_and_evaluate(texts: list[str], gold: list[str], labels: list[str], eval_texts: list[str],
                       eval_gold: np.ndarray, *, seed: int, max_steps: int | None, defaults: dict) -> dict:
    """One student as ``finetune.py --train <export> --objective hard`` trains it, evaluated on the eval rows."""
    import torch
    from transformers import AutoTokenizer

    from service.sources import resolve_model
    from train.finetune import seed_everything, train_student
    from train.student_data import check_trainable, read_exports
    from train.students import build_student

    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "reviewed.jsonl"
        with export.open("w", encoding="utf-8") as fh:
            for text, label in zip(texts, gold):
                fh.write(json.dumps({"text": text, "label": label, "status": "submitted", "labels_order": labels})
                         + "\n")
        data = read_exports([export])
    if data.labels != labels:  # the export's order is kept, so the eval ids below match
        raise RuntimeError(f"labels read back as {data.labels}, not {labels}")
    check_trainable(data, "hard")
    seed_everything(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    base = resolve_model(defaults["base_model"]).path
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = build_student("transformer", labels=labels, multi_label=False, base_dir=base)
    train_split, valid_split = data.split(defaults["valid_fraction"], seed)
    history = train_student(
        model, train_split, valid_split, tokenizer, objective="hard", device=torch.device("cpu"),
        epochs=defaults["epochs"], batch_size=defaults["batch_size"], lr=defaults["lr"] or 5e-5,
        weight_decay=defaults["weight_decay"], warmup_ratio=defaults["warmup_ratio"],
        max_length=defaults["max_length"], temperature=defaults["temperature"], w_hard=defaults["w_hard"],
        w_soft=defaults["w_soft"], patience=defaults["patience"], seed=seed, eval_every=defaults["eval_every"],
        max_steps=max_steps)
    began = time.perf_counter()
    logits = []
    with torch.inference_mode():
        for start in range(0, len(eval_texts), 128):
            enc = tokenizer(eval_texts[start:start + 128], padding=True, truncation=True,
                            max_length=defaults["max_length"], return_tensors="pt")
            logits.append(model(enc["input_ids"], enc["attention_mask"]).float())
    probabilities = torch.softmax(torch.cat(logits), dim=1).numpy()
    return {**scores_summary(probabilities, eval_gold), "train": len(train_split.examples),
            "validation": len(valid_split.examples), "steps": history["steps_done"],
            "epochs_done": history["epochs_done"], "early_stopped": history["early_stopped"],
            "train_seconds": history["seconds"], "eval_seconds": round(time.perf_counter() - began, 1)}


def teacher_on(eval_texts: list[str], eval_gold: np.ndarray, labels: list[str], template: str) -> dict:
    """The zero-shot embedding teacher's figures on the eval rows (in-process, ONNX Runtime)."""
    from pool.scorers import LocalScorer

    scorer = LocalScorer(labels, template, method="embedding", engine="onnxruntime", batch_size=64)
    try:
        began = time.perf_counter()
        scores = np.concatenate([scorer.score(eval_texts[i:i + 256]) for i in range(0, len(eval_texts), 256)])
        return {**scores_summary(scores, eval_gold), "agent": scorer.agent,
                "seconds": round(time.perf_counter() - began, 1), "template": template}
    finally:
        scorer.close()


def minimum(runs: list[dict], teacher_accuracy: float, uniform_entropy: float) -> int | None:
    """Smallest k whose every run beats the teacher with scores that are not near-uniform (``None``: no k did)."""
    by_k: dict[int, list[dict]] = {}
    for run in runs:
        by_k.setdefault(run["k"], []).append(run)
    for k in sorted(by_k):
        if all(r["accuracy"] > teacher_accuracy and r["mean_normalized_entropy"] < uniform_entropy for r in by_k[k]):
            return k
    return None


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="The shared data folder (holds classification/).")] = Path("../shared/data"),
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks of benchmarks/tiny_students.py.")] = "ag_news,emotion",
    k: Annotated[str, typer.Option(help="Reviews per label to try, comma-separated, ascending.")] = "5,10,25,50,100",
    seeds: Annotated[str, typer.Option(help="Samples (and training seeds) per k, comma-separated.")] = "13",
    eval_rows: Annotated[int, typer.Option(help="Random rows of the test split (seed 0), the same for all runs.")] = 1000,
    max_steps: Annotated[int, typer.Option(help="Cap on training steps (0: finetune.py's default, none).")] = 0,
    uniform_entropy: Annotated[float, typer.Option(help="Mean normalized entropy at or above which scores count as "
                                                   "near-uniform.")] = 0.9,
    stop_after: Annotated[int, typer.Option(help="Stop a task this many k values after its minimum (0: try all).")] = 1,
    output: Annotated[Path, typer.Option(help="The JSON report (rewritten after every run).")]
    = Path("benchmarks/results/student_min_reviews/report.json"),
) -> None:
    """Train the default student on k reviews per label and compare it with the zero-shot teacher."""
    defaults = finetune_defaults()
    ks = sorted(int(x) for x in k.split(","))
    seed_list = [int(x) for x in seeds.split(",")]
    report = {"command": "python benchmarks/student_min_reviews.py " + " ".join(sys.argv[1:]),
              "student": {"kind": "transformer", "objective": "hard", "base_model": defaults["base_model"],
                          "finetune_defaults": {n: defaults[n] for n in (
                              "epochs", "batch_size", "lr", "weight_decay", "warmup_ratio", "max_length",
                              "valid_fraction", "patience", "eval_every")},
                          "lr_used": defaults["lr"] or 5e-5, "max_steps": max_steps or None,
                          "evaluated": "float32 torch logits"},
              "eval_rows": eval_rows, "uniform_entropy": uniform_entropy, "cpu": cpu_facts(), "tasks": {}}
    output.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    for task in tasks.split(","):
        spec = TASKS[task]
        labels = spec["labels"]
        pool_texts, pool_gold = read_task(data_dir, task, "pool")
        eval_all, eval_gold_all = read_task(data_dir, task, "eval")
        rows = np.sort(np.random.default_rng(0).choice(len(eval_all), size=min(eval_rows, len(eval_all)),
                                                        replace=False))
        eval_texts = [eval_all[i] for i in rows]
        eval_gold = np.array([labels.index(eval_gold_all[i]) for i in rows])
        entry = report["tasks"][task] = {"labels": labels, "pool": str(spec["pool"][0]), "eval": str(spec["eval"][0]),
                                         "eval_rows": len(rows), "runs": []}
        entry["teacher"] = teacher_on(eval_texts, eval_gold, labels, spec["template"])
        typer.echo(f"{task}: teacher {entry['teacher']['accuracy']:.4f}", err=True)
        save()
        for value in ks:
            for seed in seed_list:
                chosen = stratified(pool_gold, labels, value, seed)
                before = cpu_facts()["load_average"]
                result = train_and_evaluate([pool_texts[i] for i in chosen], [pool_gold[i] for i in chosen], labels,
                                            eval_texts, eval_gold, seed=seed, max_steps=max_steps or None,
                                            defaults=defaults)
                run = {"k": value, "reviews": value * len(labels), "seed": seed, **result,
                       "load_average_before": before, "load_average_after": cpu_facts()["load_average"]}
                entry["runs"].append(run)
                typer.echo(f"{task} k={value} seed={seed}: accuracy {run['accuracy']:.4f}, top p "
                           f"{run['mean_top_probability']:.3f}, entropy {run['mean_normalized_entropy']:.3f}, "
                           f"{run['steps']} steps, {run['train_seconds']} s", err=True)
                save()
            entry["minimum_per_label"] = minimum(entry["runs"], entry["teacher"]["accuracy"], uniform_entropy)
            save()
            found = entry["minimum_per_label"]
            if stop_after and found is not None and sum(1 for x in ks if found < x <= value) >= stop_after:
                break
    found = [t.get("minimum_per_label") for t in report["tasks"].values()]
    report["minimum_per_label"] = None if None in found or not found else max(found)
    report["cpu_after"] = cpu_facts()
    save()
    typer.echo(json.dumps({t: v.get("minimum_per_label") for t, v in report["tasks"].items()}
                          | {"overall": report["minimum_per_label"]}))


if __name__ == "__main__":
    app()
