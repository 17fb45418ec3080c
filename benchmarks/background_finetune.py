"""The background encoder fine-tune of ``refresh --watch`` on a real pool, against the head refresh serves meanwhile.

Gold labels stand in for reviewers. In one run: ``--reviews`` pool records are drawn at random (seeded) as the
reviewed ones, the rest are pending; the snapshot a refresh would write is started as the very child
``refresh --watch`` starts (:class:`annotate.finetune_job.BackgroundFinetune`: ``nice 10``, ``--threads`` torch
threads), and while it runs the foreground refits the adapted head on the same reviews again and again (what the
next refresh rounds do), timed, next to the same refits before the child started. At the end: the held-out
accuracy that decides the swap (fine-tuned vs head, the job's own figures), and the accuracy of the pending
suggestions against their gold labels (the head fitted on every review, what refresh shows, vs the fine-tuned
model's), the job's wall times and its scoring rate.

``--pool-sample`` subsamples the pool first (the pending records the child scores are the sample minus the
reviews): scoring runs at the fine-tuned encoder's speed, so the whole pool takes minutes; the rate times the
pool size gives that cost.

Example (emotion, 300 reviews)::

    python benchmarks/background_finetune.py ../shared/data/classification/emotion/train.jsonl \\
        --label sadness --label joy --label love --label anger --label fear --label surprise \\
        --hypothesis-template "This person feels {}." --reviews 300 --pool-sample 3000 \\
        --output-dir runs/background_finetune/emotion
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_facts  # noqa: E402

logger = logging.getLogger("benchmarks.background_finetune")
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0], pretty_exceptions_enable=False)


def _accuracy(scores: np.ndarray, gold: np.ndarray) -> float:
    return float((scores.argmax(axis=1) == gold).mean())


@app.command()
def main(
    pool_path: Annotated[Path, typer.Argument(help="Labelled pool (.jsonl/.csv/.parquet).")],
    label: Annotated[list[str], typer.Option(help="Candidate label (repeat).")],
    hypothesis_template: Annotated[str, typer.Option(help="NLI/embedding hypothesis template.")] = "This example is {}.",
    text_column: Annotated[str, typer.Option(help="Text field.")] = "text",
    gold_column: Annotated[str, typer.Option(help="Gold label field.")] = "label",
    label_map: Annotated[Optional[str], typer.Option(help="JSON gold value -> candidate label.")] = None,
    reviews: Annotated[int, typer.Option(help="Reviewed records (random, seeded).")] = 300,
    pool_sample: Annotated[int, typer.Option(help="Records of the pool used (0: all).")] = 3000,
    time_budget: Annotated[float, typer.Option(help="Training seconds of the child.")] = 600.0,
    threads: Annotated[int, typer.Option(help="Torch threads of the child.")] = 1,
    pool_limit: Annotated[int, typer.Option(help="Pending texts with the head's soft labels in training.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the draw and of the fine-tune.")] = 0,
    cache_dir: Annotated[Optional[Path], typer.Option(help="simulate's scored-text cache (default: its own).")] = None,
    output_dir: Annotated[Path, typer.Option(help="Where the job and report.json go.")] = Path("runs/background_finetune"),
) -> None:
    """Run one background fine-tune on a real pool and report it against the head (see the module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from annotate.adaptive import HeadConfig, adapt
    from annotate.cli import settings_from_env, zero_shot_scorer
    from annotate.dataset import record_id
    from annotate.finetune_job import BackgroundFinetune, FinetuneSettings, write_snapshot
    from annotate.simulate import gold_indices, read_labelled, scored_split

    labels = list(label)
    texts, gold = read_labelled(pool_path, [text_column], gold_column)
    y = gold_indices(gold, labels, json.loads(label_map) if label_map else None, pool_path)
    scorer = zero_shot_scorer(settings_from_env(), labels, hypothesis_template, "embedding")
    root = cache_dir or Path.home() / ".cache" / "zeroshot-preannotate" / "annotate" / "simulate"
    key = {"labels": labels, "hypothesis_template": hypothesis_template, "method": "embedding",
           "model": scorer.model_id}
    try:
        embeddings, zero_shot = scored_split(texts, scorer, root, key)
        encoder = scorer.encoder
    finally:
        scorer.close()

    rng = np.random.default_rng(seed)
    rows = np.arange(len(texts)) if not pool_sample or pool_sample >= len(texts) else np.sort(
        rng.choice(len(texts), pool_sample, replace=False))
    texts = [texts[i] for i in rows]
    embeddings, zero_shot, y = embeddings[rows], zero_shot[rows], y[rows]
    ids = [record_id(t, str(i)) for i, t in zip(rows, texts)]
    order = rng.permutation(len(texts))
    reviewed = {int(i): int(y[i]) for i in order[:reviews]}
    pending = np.sort(order[reviews:])

    def refit() -> tuple[float, np.ndarray]:
        began = time.perf_counter()
        adapted = adapt(embeddings, zero_shot, labels, ids=ids, reviewed=reviewed, config=HeadConfig())
        return time.perf_counter() - began, adapted.scores

    before = [refit()[0] for _ in range(3)]
    _, head_scores = refit()
    settings = FinetuneSettings(min_reviews=1, time_budget=time_budget, threads=threads, pool_limit=pool_limit,
                                seed=seed, margin=0.0)
    output_dir.mkdir(parents=True, exist_ok=True)
    background = BackgroundFinetune(output_dir, settings, echo=lambda line: logger.info("%s", line))

    def write(directory: Path) -> str:
        written = write_snapshot(directory, ids=ids, texts=texts, embeddings=embeddings, zero_shot=zero_shot,
                                 labels=labels, reviewed=reviewed, discarded=[], pending=pending.tolist(),
                                 settings=settings, encoder=encoder)
        return json.loads((written / "job.json").read_text(encoding="utf-8"))["revision"]

    began = time.perf_counter()
    if not background.maybe_start(len(reviewed), write):
        raise typer.Exit(f"a finished job for this snapshot exists already under {background.root}: remove it")
    during = []
    try:
        finished = None
        while finished is None and background.running:
            during.append(refit()[0])
            time.sleep(2.0)
            finished = background.poll()
    finally:
        background.stop()
    wall = time.perf_counter() - began
    if finished is None:
        raise typer.Exit("the background fine-tune failed (see its log above)")
    result = background.latest(labels)
    index = {rid: j for j, rid in enumerate(result.ids)}
    tuned_scores = result.scores[[index[ids[i]] for i in pending]]
    report = {
        "pool": str(pool_path), "pool_records": len(texts), "reviews": len(reviewed), "pending": int(len(pending)),
        "seed": seed, "settings": result.info["settings"], "revision": result.revision,
        "holdout": result.holdout, "holdout_accuracy_finetuned": result.accuracy,
        "holdout_accuracy_head": result.head_accuracy, "swapped_in": result.wins(0.0),
        "pending_accuracy_zero_shot": _accuracy(zero_shot[pending], y[pending]),
        "pending_accuracy_head": _accuracy(head_scores[pending], y[pending]),
        "pending_accuracy_finetuned": _accuracy(tuned_scores, y[pending]),
        "job_wall_seconds": wall, "job_train_seconds": result.train_seconds,
        "job_score_seconds": result.score_seconds,
        "job_score_texts_per_second": len(pending) / max(result.score_seconds, 1e-9),
        "head_refit_seconds_before": statistics.median(before),
        "head_refit_seconds_during": statistics.median(during) if during else None,
        "head_refits_during": len(during),
        "cpu": cpu_facts(),
    }
    (output_dir / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    typer.echo(json.dumps({k: v for k, v in report.items() if k not in ("settings", "cpu")}, indent=1, default=float))
    typer.echo(f"cpu: {report['cpu']}")


if __name__ == "__main__":
    app()
