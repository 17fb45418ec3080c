"""Tiny students (fastText, Kim CNN, BiLSTM) distilled from the pool-adapted head: inputs, speed and the table.

Three steps (``scripts/tiny_students.sh`` runs them all, with the training commands in between):

``prepare TASK``: from a scored pool and its evaluation split (:class:`pool.store.PoolStore` folders with a
``gold.json``, e.g. ``runs/issue11/pools/ag_news/{pool,eval}``), fit the pool-adapted head with no review and with
1,000 gold-labelled records (:func:`annotate.adaptive.adapt`, the gold labels standing in for reviewers), save
both heads, and write the files ``train/finetune.py`` reads: the pool texts, an export of the 1,000 reviewed
records, the evaluation file (gold mapped to the candidate labels) and, when the guard keeps the zero-shot scores,
an export holding those scores as the teacher.

``speed DIR...``: texts/s of each student (int8 and float32 on ONNX Runtime, through
:func:`service.classify.load_classifier`, tokenization in the timed path: the fast Rust tokenizer on each batch of
64) next to the embedding teacher, the adapted head (the same encoder pass plus a matrix product) and the NLI
teacher (K pairs a text), all in this one process, interleaved over ``--rounds`` rounds (median), CPU model, flags
and load average recorded.

``table``: the Markdown table of every student's report and the speed file.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import typer

from benchmarks.machine import cpu_facts  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])

TASKS = {
    "ag_news": {"map": {"World": "world news", "Sports": "sports", "Business": "business",
                        "Sci/Tech": "science and technology"},
                "labels": ["world news", "sports", "business", "science and technology"],
                "template": "This news article is about {}.",
                "pool": ("ag_news/train_unlabeled_8k_description_only.jsonl", ["text"]),
                "eval": ("ag_news/test.jsonl", ["title", "description"])},
    "emotion": {"map": {}, "labels": ["sadness", "joy", "love", "anger", "fear", "surprise"],
                "template": "This person feels {}.",
                "pool": ("emotion/train.jsonl", ["text"]), "eval": ("emotion/test.jsonl", ["text"])},
    "sst2": {"map": {}, "labels": ["negative", "positive"], "template": "The sentiment of this review is {}.",
             "pool": ("sst2/train.jsonl", ["text"]), "eval": ("sst2/validation.jsonl", ["text"])},
}


@app.command()
def pools(task: str, data: Annotated[Path, typer.Option(help="The shared data folder (holds classification/).")]
          = Path("../shared/data"), out: Annotated[Path, typer.Option(help="Writes <out>/<task>/{pool,eval}.")]
          = Path("runs/issue11/pools"),
          cache_dir: Annotated[Path, typer.Option(help="simulate's scored-text cache, reused when it has the texts.")]
          = Path.home() / ".cache" / "zeroshot-preannotate" / "annotate" / "simulate") -> None:
    """The scored pool and evaluation split of TASK (embeddings and zero-shot embedding scores of the packaged
    encoder, gold values in ``gold.json``) that ``prepare`` and ``benchmarks/encoder_finetune_vs_head.py`` read."""
    from annotate.cli import settings_from_env, zero_shot_scorer
    from annotate.dataset import record_id
    from annotate.simulate import read_labelled, scored_split
    from pool.store import PoolStore, shard_table

    if task not in TASKS:
        raise typer.BadParameter(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    spec = TASKS[task]
    scorer = zero_shot_scorer(settings_from_env(), spec["labels"], spec["template"], "embedding")
    key = {"labels": spec["labels"], "hypothesis_template": spec["template"], "method": "embedding",
           "model": scorer.model_id}
    try:
        for split in ("pool", "eval"):
            path, fields = spec[split]
            texts, gold = read_labelled(data / "classification" / path, fields, "label")
            embeddings, scores = scored_split(texts, scorer, cache_dir, key)
            store = PoolStore(out / task / split)
            ids = [record_id(t, str(i)) for i, t in enumerate(texts)]
            store.write_shard("0", shard_table(ids, texts, scores, embeddings, spec["labels"]))
            store.write_meta({**key, "encoder": scorer.encoder, "agent": scorer.agent, "method": "embedding"})
            (out / task / split / "gold.json").write_text(json.dumps(gold))
            typer.echo(f"{task}/{split}: {len(texts)} texts -> {store.root}")
    finally:
        scorer.close()


@app.command()
def prepare(task: str, pools: Annotated[Path, typer.Option(help="Folder with pool/ and eval/ PoolStores.")],
            out: Annotated[Path, typer.Option(help="Where heads and files go.")],
            reviews: int = 1000, seed: int = 0) -> None:
    """Heads (0 and ``reviews`` reviews) and the input files of one task."""
    from annotate.adaptive import adapt
    from pool.store import PoolStore

    out.mkdir(parents=True, exist_ok=True)
    mapping = TASKS[task]["map"]
    pool = PoolStore(pools / "pool").load()
    evaluation = PoolStore(pools / "eval").load()
    labels = pool.labels
    gold = [mapping.get(g, g) for g in json.loads((pools / "pool" / "gold.json").read_text())]
    eval_gold = [mapping.get(g, g) for g in json.loads((pools / "eval" / "gold.json").read_text())]
    y = np.array([labels.index(g) for g in gold])
    y_eval = np.array([labels.index(g) for g in eval_gold])
    facts = {"task": task, "labels": labels, "pool": len(pool), "eval": len(evaluation), **cpu_facts(),
             "zero_shot_eval_accuracy": float((evaluation.scores.argmax(1) == y_eval).mean())}
    with (out / "pool.jsonl").open("w") as fh:
        for text in pool.texts:
            fh.write(json.dumps({"text": text}) + "\n")
    with (out / "eval.jsonl").open("w") as fh:
        for text, label in zip(evaluation.texts, eval_gold):
            fh.write(json.dumps({"text": text, "label": label}) + "\n")
    chosen = np.sort(np.random.default_rng(seed).choice(len(pool), size=reviews, replace=False))
    with (out / "reviewed.jsonl").open("w") as fh:
        for row in chosen:
            fh.write(json.dumps({"text": pool.texts[row], "label": gold[row], "status": "submitted",
                                 "labels_order": labels}) + "\n")
    for name, reviewed in (("head0", {}), (f"head{reviews}", {int(r): int(y[r]) for r in chosen})):
        began = time.perf_counter()
        adapted = adapt(pool.embeddings, pool.scores, labels, ids=pool.ids, reviewed=reviewed,
                        encoder=pool.meta.get("encoder"),
                        meta={"hypothesis_template": pool.meta.get("hypothesis_template")})
        entry = {"mode": adapted.report.mode, "note": adapted.report.note, "fit_seconds": time.perf_counter() - began,
                 "changed_share": adapted.report.changed_share}
        if adapted.head is not None:
            adapted.head.save(out / name)
            entry["eval_accuracy"] = float((adapted.head.predict_proba(evaluation.embeddings).argmax(1) == y_eval).mean())
        else:  # the guard kept the zero-shot scores: they are the no-review teacher, as an export without labels
            entry["eval_accuracy"] = facts["zero_shot_eval_accuracy"]
            with (out / f"{name}_zero_shot.jsonl").open("w") as fh:
                for text, scores in zip(pool.texts, pool.scores):
                    fh.write(json.dumps({"text": text, "label": None, "status": "submitted", "labels_order": labels,
                                         "teacher_scores": scores.tolist()}) + "\n")
        facts[name] = entry
    (out / "prepare.json").write_text(json.dumps(facts, indent=2))
    typer.echo(json.dumps(facts, indent=2))


@app.command()
def speed(student_dirs: list[Path], eval_file: Annotated[Path, typer.Option("--eval")],
          head: Annotated[Path, typer.Option(help="An adapted head of the task (its template and labels).")],
          output: Annotated[Path, typer.Option()], texts: int = 1000, rounds: int = 3) -> None:
    """Students, embedding teacher, head and NLI teacher timed side by side on the same texts."""
    import torch

    from pool.scorers import LocalScorer
    from service.classify import load_classifier
    from service.config import Settings
    from service.head import AdaptiveHead
    from service.sources import default_cache_dir

    torch.set_num_threads(os.cpu_count() or 1)
    sample = [json.loads(line)["text"] for line in eval_file.read_text().splitlines()[:texts]]
    adapted = AdaptiveHead.load(head)
    template = adapted.meta.get("hypothesis_template") or "This text is about {}."
    timed: dict = {}
    embedding = LocalScorer(adapted.labels, template, method="embedding", engine="onnxruntime", batch_size=64)
    nli = LocalScorer(adapted.labels, template, method="nli", engine="onnxruntime", batch_size=64, embeddings=False)
    classifiers = {}
    for directory in student_dirs:
        for quantization in ("auto", "none"):
            name = f"{directory.name}:{'int8' if quantization == 'auto' else 'fp32'}"
            classifiers[name] = load_classifier(name, str(directory), engine="onnxruntime", quantization=quantization,
                                                cache_dir=default_cache_dir(), batch_size=Settings().batch_size)

    def run(fn):
        fn(sample[:64])  # warm-up
        began = time.perf_counter()
        for i in range(0, len(sample), 64):
            fn(sample[i:i + 64])
        return len(sample) / (time.perf_counter() - began)

    runners = {"teacher:embedding": embedding.score,
               "teacher:adapted-head": lambda batch: adapted.predict_proba(embedding.embed(batch)),
               "teacher:nli": nli.score,
               **{name: c.probabilities for name, c in classifiers.items()}}
    before = cpu_facts()
    for _ in range(rounds):
        for name, fn in runners.items():
            timed.setdefault(name, []).append(run(fn))
    result = {"texts": len(sample), "rounds": rounds, "batch": 64, "before": before, "after": cpu_facts(),
              "texts_per_s": {k: round(statistics.median(v), 1) for k, v in timed.items()},
              "all_rounds": {k: [round(x, 1) for x in v] for k, v in timed.items()},
              "teachers": {"embedding": embedding.agent, "nli": nli.agent}}
    for c in classifiers.values():
        c.close()
    embedding.close()
    nli.close()
    output.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result["texts_per_s"], indent=2))


@app.command()
def table(runs: Path, output: Path) -> None:
    """docs table from ``runs/<task>/<student>-<setting>/report.json`` and ``runs/<task>/speed.json``."""
    lines = []
    for task_dir in sorted(p for p in runs.iterdir() if (p / "prepare.json").is_file()):
        prep = json.loads((task_dir / "prepare.json").read_text())
        speed = json.loads((task_dir / "speed.json").read_text()) if (task_dir / "speed.json").is_file() else None
        rate = speed["texts_per_s"] if speed else {}
        lines += [f"### {task_dir.name} (pool {prep['pool']} -> eval {prep['eval']})", "",
                  f"Teachers on the eval split: zero-shot {prep['zero_shot_eval_accuracy']:.4f}; adapted head, no review "
                  f"{prep['head0']['eval_accuracy']:.4f} ({prep['head0']['mode']}); with 1,000 reviews "
                  f"{prep['head1000']['eval_accuracy']:.4f} ({prep['head1000']['mode']}).", ""]
        if speed:
            lines += [f"Speed ({speed['texts']} eval texts, 64 a call, median of {speed['rounds']} interleaved rounds; "
                      f"{speed['before']['cpu']}, flags {speed['before']['flags']}, {speed['before']['cores']} cores, "
                      f"load average {speed['before']['load_average']} before, {speed['after']['load_average']} after): "
                      f"embedding teacher {rate['teacher:embedding']}, adapted head {rate['teacher:adapted-head']}, "
                      f"NLI teacher (K={len(prep['labels'])}) {rate['teacher:nli']} texts/s.", ""]
        lines += ["| student | trained on | accuracy (int8) | macro-F1 | texts/s int8 (fp32) | x embedding teacher | "
                  "x NLI teacher | size int8 / fp32 ONNX (MB) | train s | augmented |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for run_dir in sorted(p for p in task_dir.iterdir() if (p / "report.json").is_file()):
            rep = json.loads((run_dir / "report.json").read_text())
            ev = rep["evaluation"]["int8"]
            key = f"{run_dir.name}:int8"
            s8, s32 = rate.get(key), rate.get(f"{run_dir.name}:fp32")
            ratio = (lambda t: f"{s8 / rate[t]:.1f}" if s8 and rate.get(t) else "-")
            aug = rep["teacher"].get("augmentation")
            aug_txt = (f"{aug['augmented_texts']} texts, {aug['total_seconds']} s" if aug else "-")
            lines.append(f"| {rep['student']} | {run_dir.name.split('-', 1)[1]} | {ev['accuracy']:.4f} | "
                         f"{ev['macro_f1']:.4f} | {s8} ({s32}) | {ratio('teacher:embedding')} | {ratio('teacher:nli')} | "
                         f"{rep['size']['onnx_int8_mb']} / {rep['size']['onnx_mb']} | {rep['history']['seconds']} | "
                         f"{aug_txt} |")
        lines.append("")
        if speed:
            plot_tradeoff(task_dir, rate, output.with_name(f"{output.stem}_{task_dir.name}.png"))
    output.write_text("\n".join(lines) + "\n")
    typer.echo("\n".join(lines))


def plot_tradeoff(task_dir: Path, rate: dict, path: Path) -> Path:
    """Accuracy (int8, eval split) against texts/s (log scale) of every student run of ``task_dir``, with the
    embedding and NLI teachers' rates as vertical lines: the speed/accuracy trade-off at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"head0": "o", "reviews1000": "s"}
    for run_dir in sorted(p for p in task_dir.iterdir() if (p / "report.json").is_file()):
        rep = json.loads((run_dir / "report.json").read_text())
        speed = rate.get(f"{run_dir.name}:int8")
        if not speed:
            continue
        setting = run_dir.name.split("-", 1)[1]
        ax.scatter(speed, rep["evaluation"]["int8"]["accuracy"], marker=markers.get(setting.split("-")[0], "^"),
                   s=50)
        ax.annotate(run_dir.name, (speed, rep["evaluation"]["int8"]["accuracy"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    for key, style in (("teacher:embedding", "--"), ("teacher:nli", ":")):
        if rate.get(key):
            ax.axvline(rate[key], color="grey", linestyle=style, label=f"{key.split(':')[1]} teacher")
    ax.set_xscale("log")
    ax.set_xlabel("texts/s, int8 on ONNX Runtime (log scale; tokenization included)")
    ax.set_ylabel("accuracy on the eval split")
    ax.set_title(f"{task_dir.name}: tiny students (o: no review, s: 1,000 reviews)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    app()
