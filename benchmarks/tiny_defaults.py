"""Choose the tiny students' default sizes (``train/student_defaults.py``): each candidate size of fastText, Kim CNN
and BiLSTM trained the way ``train/finetune.py --objective soft`` trains it, on the tune halves of the dev tasks.

For each task (the tune halves of ``benchmarks/cold_start.py``'s dev tasks, pools capped at ``--pool-cap``): the
teacher is the adapted head fitted on the pool with ``--reviews`` random gold labels standing in for reviews
(:func:`annotate.adaptive.adapt`); its probabilities on every pool text are the soft labels. Every candidate is
trained with :func:`train.finetune.train_student` (sparse embedding tables, SparseAdam; ``--epochs`` epochs, batch 64,
10% of the pool for early stopping) and measured on the task's evaluation part: accuracy (PyTorch, float32),
training seconds, parameters, float32 and int8 weight bytes, and texts/s of its ONNX graph on ONNX Runtime (64 texts
a call, tokenization included, one ``--speed-task``). Each row is the mean over the tasks; the chosen default is the
smallest candidate within ``--within`` (1 point: about what four evaluation sets of 1,000 texts can resolve) of its
student's best mean accuracy (the fewest epochs among equal sizes).

    python benchmarks/tiny_defaults.py --data-dir ../shared/data --output-dir benchmarks/results/tiny_defaults
"""

from __future__ import annotations

import json
import logging
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

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0], rich_markup_mode=None,
                  pretty_exceptions_enable=False)

#: Candidate sizes of each student; fastText's also take the number of epochs (its steps cost milliseconds).
CANDIDATES = {
    "fasttext": [{"dim": d, "buckets": b, "epochs": e} for e in (3, 5, 10) for d in (16, 32, 64, 128)
                 for b in (1 << 15, 1 << 17, 1 << 19)],
    "cnn": [{"dim": d, "filters": f} for d in (64, 128) for f in (50, 100)],
    "bilstm": [{"dim": d, "hidden": h} for d in (64, 128) for h in (64, 128)],
}


def teacher_data(data_dir: Path, task: str, pool_cap: int, eval_cap: int, reviews: int, cache_dir: Path):
    """``(StudentData of the pool with soft labels, eval texts, eval gold, labels)`` of one dev task's tune half."""
    from annotate.adaptive import adapt
    from annotate.cli import settings_from_env, zero_shot_scorer
    from annotate.simulate import scored_split
    from benchmarks.cold_start import TASKS, task_split
    from train.student_data import Example, StudentData

    spec = TASKS[task]
    pool_texts, pool_y, eval_texts, eval_y, _ = task_split(data_dir, task, "tune", pool_cap, eval_cap)
    scorer = zero_shot_scorer(settings_from_env(), spec["labels"], spec["template"], "embedding")
    key = {"labels": spec["labels"], "hypothesis_template": spec["template"], "method": "embedding",
           "model": scorer.model_id}
    try:
        x, p0 = scored_split(pool_texts, scorer, cache_dir, key)
    finally:
        scorer.close()
    rows = np.random.default_rng(0).choice(len(pool_texts), size=min(reviews, len(pool_texts)), replace=False)
    head = adapt(x, p0, spec["labels"], reviewed={int(r): int(pool_y[r]) for r in rows})
    data = StudentData(list(spec["labels"]), False, [Example(text=t, soft=np.asarray(s, dtype=np.float64))
                                                     for t, s in zip(pool_texts, head.scores)])
    return data, eval_texts, np.asarray(eval_y), spec["labels"]


def accuracy(model, tokenizer, texts: list[str], gold: np.ndarray, max_length: int) -> float:
    import torch

    predicted = []
    with torch.inference_mode():
        for i in range(0, len(texts), 256):
            enc = tokenizer(texts[i:i + 256], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            predicted.append(model(enc["input_ids"], enc["attention_mask"]).argmax(1).numpy())
    return float((np.concatenate(predicted) == gold).mean())


def onnx_speed(model, tokenizer, texts: list[str], max_length: int) -> float:
    """Texts/s of the model's float32 ONNX graph on ONNX Runtime, 64 texts a call, tokenization included."""
    import onnxruntime as ort

    from train.students import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(batch):
            enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="np")
            return session.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                      "attention_mask": enc["attention_mask"].astype(np.int64)})

        run(texts[:64])
        began = time.perf_counter()
        for i in range(0, len(texts), 64):
            run(texts[i:i + 64])
        return len(texts) / (time.perf_counter() - began)


@app.command()
def main(data_dir: Annotated[Path, typer.Option(help="The shared data folder.")] = Path("../shared/data"),
         output_dir: Annotated[Path, typer.Option()] = Path("benchmarks/results/tiny_defaults"),
         tasks: Annotated[str, typer.Option(help="Dev tasks (their tune halves).")]
         = "imdb,tweeteval_sentiment,cr,goemotions_ekman",
         students: Annotated[str, typer.Option()] = "fasttext,cnn,bilstm",
         pool_cap: int = 5000, eval_cap: int = 1000, reviews: int = 300, epochs: float = 3.0,
         max_length: int = 128, within: float = 0.01, speed_task: str = "tweeteval_sentiment",
         cache_dir: Annotated[Path, typer.Option()]
         = Path.home() / ".cache" / "zeroshot-preannotate" / "annotate" / "simulate") -> None:
    """Train every candidate on every task; write ``tiny_defaults.json`` and ``tiny_defaults.md``."""
    import torch
    from transformers import AutoTokenizer

    from service.sources import resolve_model
    from train.finetune import seed_everything, train_student
    from train.student_defaults import BATCH_SIZES, LEARNING_RATES
    from train.students import build_student

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)
    output_dir.mkdir(parents=True, exist_ok=True)
    base = resolve_model("packaged:all-MiniLM-L6-v2").path
    tokenizer = AutoTokenizer.from_pretrained(base)
    machine = cpu_facts()
    inputs = {task: teacher_data(data_dir, task, pool_cap, eval_cap, reviews, cache_dir) for task in tasks.split(",")}
    rows = []
    for student in students.split(","):
        for config in CANDIDATES[student]:
            entry = {"student": student, "config": config, "tasks": {}}
            sizes = {k: v for k, v in config.items() if k != "epochs"}
            for task, (data, eval_texts, eval_gold, labels) in inputs.items():
                seed_everything(13)
                model = build_student(student, labels=labels, multi_label=False, base_dir=base,
                                      hyperparameters=sizes)
                train, valid = data.split(0.1, 13)
                began = time.perf_counter()
                history = train_student(model, train, valid, tokenizer, objective="soft", device=torch.device("cpu"),
                                        epochs=config.get("epochs", epochs), batch_size=BATCH_SIZES[student],
                                        lr=LEARNING_RATES[student],
                                        weight_decay=0.01, warmup_ratio=0.06, max_length=max_length,
                                        temperature=2.0, w_hard=0.5, w_soft=0.5, patience=2, seed=13)
                seconds = time.perf_counter() - began
                entry["tasks"][task] = {"accuracy": accuracy(model, tokenizer, eval_texts, eval_gold, max_length),
                                        "train_seconds": round(seconds, 2), "steps": history["steps_done"]}
                if task == speed_task or "texts_per_s" not in entry:
                    entry["texts_per_s"] = round(onnx_speed(model, tokenizer, eval_texts[:1000], max_length), 1)
                params = sum(p.numel() for p in model.parameters())
                tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
                entry.update(parameters=int(params), fp32_mb=round(4 * params / 1e6, 2),
                             int8_mb=round((tables + 4 * (params - tables)) / 1e6, 2))
            accs = [t["accuracy"] for t in entry["tasks"].values()]
            entry["mean_accuracy"] = float(np.mean(accs))
            entry["mean_train_seconds"] = float(np.mean([t["train_seconds"] for t in entry["tasks"].values()]))
            rows.append(entry)
            typer.echo(f"{student} {config}: mean accuracy {entry['mean_accuracy']:.4f}, "
                       f"{entry['mean_train_seconds']:.1f} s, {entry['fp32_mb']} MB fp32, {entry['texts_per_s']} texts/s")
    chosen = {}
    for student in students.split(","):
        mine = [r for r in rows if r["student"] == student]
        best = max(r["mean_accuracy"] for r in mine)
        chosen[student] = min((r for r in mine if r["mean_accuracy"] >= best - within),
                              key=lambda r: (r["parameters"], r["config"].get("epochs", epochs)))
    report = {"machine": machine, "command": "python benchmarks/tiny_defaults.py " + " ".join(sys.argv[1:]),
              "tasks": list(inputs), "reviews": reviews, "epochs": epochs, "within": within, "rows": rows,
              "chosen": {k: v["config"] for k, v in chosen.items()}}
    (output_dir / "tiny_defaults.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    lines = [f"Machine: {machine['cpu']}, {machine['cores']} cores, flags {machine['flags']}, load "
             f"{machine['load_average']}. Tasks (tune halves): {', '.join(inputs)}; teacher: the adapted head with "
             f"{reviews} random reviews; {epochs:g} epochs, soft objective.", "",
             "| student | config | mean accuracy | " + " | ".join(inputs) + " | train s (mean) | parameters | fp32 MB | "
             "int8 MB | texts/s (ONNX fp32) | default |", "|" + "---|" * (9 + len(inputs))]
    for r in rows:
        mark = "yes" if chosen[r["student"]] is r else ""
        lines.append(f"| {r['student']} | {json.dumps(r['config'])} | {r['mean_accuracy']:.4f} | "
                     + " | ".join(f"{r['tasks'][t]['accuracy']:.4f}" for t in inputs)
                     + f" | {r['mean_train_seconds']:.1f} | {r['parameters']:,} | {r['fp32_mb']} | {r['int8_mb']} | "
                     f"{r['texts_per_s']} | {mark} |")
    (output_dir / "tiny_defaults.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    typer.echo("\n".join(lines))


if __name__ == "__main__":
    app()
