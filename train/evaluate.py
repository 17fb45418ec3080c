"""Zero-shot evaluation on labelled classification sets, through the service's code.

The texts go through :func:`service.loader.load_methods` and the same zero-shot method
(``--method nli|embedding|ensemble``) the service runs, so the numbers are the served
numbers. Default suite: the full AG News test split (text = title + description) and the emotion
test split, each with several hypothesis templates and label verbalizations.

Example::

    python -m train.evaluate --model default --data-dir ../shared/data
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import numpy as np
import typer
from tqdm.auto import tqdm

if TYPE_CHECKING:
    import torch

from train.nli_data import EVAL_FILES, NLI_CLASSES, NLIPair, read_pairs

logger = logging.getLogger("train.evaluate")
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0], rich_markup_mode=None)


@dataclass(frozen=True)
class ZeroShotTask:
    """One zero-shot evaluation: a labelled JSONL file, a template, and the label verbalizations.

    ``verbalizer`` maps each gold label of the file to the candidate label text sent to the model
    (identity for the file's own label names).
    """

    dataset: str
    path: Path
    template: str
    verbalizer: dict[str, str]
    text_fields: tuple[str, ...] = ("text",)
    multi_label: bool = False
    tags: dict = field(default_factory=dict)


AG_NEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
AG_NEWS_DESCRIPTIVE = {"World": "world news", "Sports": "sports", "Business": "business", "Sci/Tech": "science and technology"}
EMOTION_LABELS = ("sadness", "joy", "love", "anger", "fear", "surprise")


def default_zero_shot_suite(data_dir: Path) -> list[ZeroShotTask]:
    """AG News test (3 settings) and emotion test (3 templates); files missing from ``data_dir`` are skipped."""
    ag = Path(data_dir) / "classification" / "ag_news" / "test.jsonl"
    emotion = Path(data_dir) / "classification" / "emotion" / "test.jsonl"
    identity_ag = {label: label for label in AG_NEWS_LABELS}
    identity_emotion = {label: label for label in EMOTION_LABELS}
    tasks = [
        ZeroShotTask("ag_news", ag, "This text is about {}.", identity_ag, ("title", "description")),
        ZeroShotTask("ag_news", ag, "This news article is about {}.", identity_ag, ("title", "description")),
        ZeroShotTask("ag_news", ag, "This news article is about {}.", AG_NEWS_DESCRIPTIVE, ("title", "description")),
        ZeroShotTask("emotion", emotion, "This text is about {}.", identity_emotion),
        ZeroShotTask("emotion", emotion, "This person feels {}.", identity_emotion),
        ZeroShotTask("emotion", emotion, "The emotion of this text is {}.", identity_emotion),
    ]
    present = [t for t in tasks if t.path.is_file()]
    for task in tasks:
        if not task.path.is_file():
            logger.warning("zero-shot eval file %s missing, skipped", task.path)
    return present


def read_labelled(path: Path, text_fields: tuple[str, ...], limit: int | None = None) -> tuple[list[str], list[str]]:
    """Texts (fields joined by a space) and gold labels from a JSONL file."""
    texts, labels = [], []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            texts.append(" ".join(row[f].strip() for f in text_fields if row.get(f)))
            labels.append(row["label"])
            if limit is not None and len(texts) >= limit:
                break
    return texts, labels


def evaluate_task(classifier, task: ZeroShotTask, *, limit: int | None = None, chunk: int = 256) -> dict:
    """Accuracy, macro-F1 and throughput of one task (scores from ``classifier.scores``)."""
    from sklearn.metrics import accuracy_score, f1_score

    texts, gold = read_labelled(task.path, task.text_fields, limit)
    gold_names = list(task.verbalizer)
    candidates = [task.verbalizer[g] for g in gold_names]
    predictions = []
    started = time.perf_counter()
    for start in tqdm(range(0, len(texts), chunk), desc=f"{task.dataset} {task.template!r}", unit="chunk", leave=False):
        scores = classifier.scores(texts[start:start + chunk], candidates, hypothesis_template=task.template,
                                   multi_label=task.multi_label)
        predictions.extend(gold_names[i] for i in scores.argmax(axis=1))
    seconds = time.perf_counter() - started
    result = {
        "dataset": task.dataset, "template": task.template, "labels": candidates, "n": len(texts),
        "accuracy": float(accuracy_score(gold, predictions)),
        "macro_f1": float(f1_score(gold, predictions, labels=gold_names, average="macro")),
        "texts_per_s": round(len(texts) / seconds, 2),
        "pairs_per_s": round(len(texts) * len(candidates) / seconds, 2),
        "prediction_counts": {g: int(np.sum(np.array(predictions) == g)) for g in gold_names},
    }
    logger.info("%s %r %s: accuracy %.4f macro-F1 %.4f (%d texts, %.1f texts/s)", task.dataset, task.template,
                candidates, result["accuracy"], result["macro_f1"], len(texts), result["texts_per_s"])
    return result


def predict_nli(model, tokenizer, pairs: list[NLIPair], *, device: torch.device, batch_size: int = 64,
                max_length: int = 256, desc: str = "eval") -> np.ndarray:
    """Predicted class ids of a torch sequence classifier, shape ``(len(pairs),)``, in :data:`NLI_CLASSES` order."""
    import torch

    model.eval()
    order = np.argsort([len(p.premise) + len(p.hypothesis) for p in pairs])
    preds = np.zeros(len(pairs), dtype=np.int64)
    for start in tqdm(range(0, len(pairs), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[start:start + batch_size]
        with torch.inference_mode():
            enc = tokenizer([pairs[i].premise for i in idx], [pairs[i].hypothesis for i in idx], padding=True,
                            truncation="only_first", max_length=max_length, return_tensors="pt").to(device)
            preds[idx] = model(**enc).logits.argmax(-1).cpu().numpy()
    return preds


def evaluate_nli(model, tokenizer, eval_dir: Path, *, device: torch.device, limit: int | None = None) -> dict:
    """Accuracy and per-class F1 on each (3-class) file of :data:`EVAL_FILES` present in ``eval_dir``.

    Returns:
        ``{name: {"n", "accuracy", "f1": {class: f1}}}``.
    """
    from sklearn.metrics import accuracy_score, f1_score

    results = {}
    for name, file in EVAL_FILES.items():
        path = Path(eval_dir) / file
        if not path.is_file():
            logger.warning("eval file %s missing, skipped", path)
            continue
        pairs = read_pairs(path)[:limit]
        gold = np.array([NLI_CLASSES.index(p.label) for p in pairs])
        pred = predict_nli(model, tokenizer, pairs, device=device, desc=f"eval {name}")
        f1 = f1_score(gold, pred, labels=[0, 1, 2], average=None)
        results[name] = {"n": len(pairs), "accuracy": float(accuracy_score(gold, pred)),
                         "f1": {c: float(f1[i]) for i, c in enumerate(NLI_CLASSES)}}
        logger.info("%s: accuracy %.4f (n=%d)", name, results[name]["accuracy"], len(pairs))
    return results


def run_zero_shot_suite(model: str | Path, tasks: list[ZeroShotTask], *, engine: str = "onnxruntime",
                        limit: int | None = None, batch_size: int = 64, cache_dir: Path | None = None,
                        method: str = "nli", embedding_model: str = "default") -> list[dict]:
    """Load the models ``method`` needs with the service's loader and evaluate every task; one result dict per task."""
    from service.config import Settings
    from service.loader import load_methods

    options = {"cache_dir": cache_dir} if cache_dir is not None else {}
    served = load_methods(Settings(
        model=str(model) if method != "embedding" else "none", method=method, engine=engine, batch_size=batch_size,
        embedding_model=embedding_model if method != "nli" else "none", **options))
    try:
        return [{**evaluate_task(served.methods[method], task, limit=limit), "method": method,
                 "engine": served.engine_name(method)} for task in tasks]
    finally:
        served.close()


@app.command()
def main(
    model: Annotated[str, typer.Option(help="default, a model directory or a hub id.")] = "default",
    data_dir: Annotated[Path, typer.Option(help="The shared data folder (holds classification/).")] = Path("../shared/data"),
    engine: Annotated[str, typer.Option(help="auto, deepsparse, onnxruntime or torch.")] = "onnxruntime",
    limit: Annotated[Optional[int], typer.Option(help="First N texts of each dataset (default: all).")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Write the results as JSON here.")] = None,
    nli: Annotated[bool, typer.Option(help="Also evaluate NLI accuracy on MNLI-m / SNLI test / XNLI-en dev (torch).")] = False,
    dataset: Annotated[Optional[list[str]], typer.Option(help="Only these datasets (ag_news, emotion); repeatable.")] = None,
    template: Annotated[Optional[str], typer.Option(help="Only tasks with this hypothesis template.")] = None,
    method: Annotated[str, typer.Option(help="Zero-shot method: nli, embedding or ensemble.")] = "nli",
    embedding_model: Annotated[str, typer.Option(help="Sentence encoder of the embedding/ensemble methods.")] = "default",
) -> None:
    """Zero-shot accuracy and macro-F1 of a model on AG News and emotion (several templates each)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if nli:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from service.sources import resolve_model

        path = resolve_model(model).path
        classifier = AutoModelForSequenceClassification.from_pretrained(path, torch_dtype=torch.float32)
        nli_results = evaluate_nli(classifier, AutoTokenizer.from_pretrained(path), data_dir / "nli" / "eval",
                                   device=torch.device("cpu"))
        typer.echo("| set | n | accuracy |\n|---|---|---|")
        for name, r in nli_results.items():
            typer.echo(f"| {name} | {r['n']} | {r['accuracy']:.4f} |")
    tasks = [t for t in default_zero_shot_suite(data_dir)
             if (not dataset or t.dataset in dataset) and (template is None or t.template == template)]
    if not tasks:
        typer.echo(f"error: no evaluation task matches under {data_dir}/classification", err=True)
        raise typer.Exit(1)
    if method not in ("nli", "embedding", "ensemble"):
        typer.echo(f"error: --method must be nli, embedding or ensemble, not {method!r}", err=True)
        raise typer.Exit(2)
    results = run_zero_shot_suite(model, tasks, engine=engine, limit=limit, method=method,
                                  embedding_model=embedding_model)
    typer.echo("| dataset | template | labels | n | accuracy | macro-F1 | texts/s |\n|---|---|---|---|---|---|---|")
    for r in results:
        typer.echo(f"| {r['dataset']} | `{r['template']}` | {', '.join(r['labels'])} | {r['n']} | "
                   f"{r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['texts_per_s']} |")
    if output:
        output.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    app()
