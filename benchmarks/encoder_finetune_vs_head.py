"""Fine-tuned encoder against the frozen adapted head, with gold labels standing in for reviewers (issue 11).

For each task and review budget, in one run: the reviewed records are drawn (random order with ``--seed``, or
the least-confidence order of ``python -m annotate simulate``, replayed here round by round with the same
:func:`annotate.adaptive.adapt` and :mod:`annotate.strategies`), the frozen head is fitted on them
(:func:`annotate.adaptive.adapt`, the reference) and the encoder is fine-tuned on them
(:func:`annotate.encoder_finetune.finetune_on_reviews`); both are scored on the evaluation split. Wall times: the
fine-tune, scoring the evaluation texts, and scoring ``--pool-score-limit`` pool texts (the rate times the pool
size gives the full re-score, reported as an extrapolation).

Inputs are the scored pools of ``runs/issue11/pools/<task>/{pool,eval}`` (:class:`pool.store.PoolStore` with
``gold.json``: texts, frozen embeddings, zero-shot scores; made from ``../shared/data/classification``: AG News
test with title and description joined by a space, emotion test, SST-2 validation).

Example::

    python benchmarks/encoder_finetune_vs_head.py --tasks sst2,emotion,ag_news --budgets 300,1000 \\
        --time-budget 240 --output-dir runs/encoder_finetune
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_facts  # noqa: E402

logger = logging.getLogger("benchmarks.encoder_finetune")
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0], pretty_exceptions_enable=False)

#: gold values of the stores' gold.json -> candidate labels (identity where absent)
LABEL_MAPS = {"ag_news": {"World": "world news", "Sports": "sports", "Business": "business",
                          "Sci/Tech": "science and technology"}}


def load_split(root: Path, task: str, split: str):
    """``(pool, gold indices)`` of ``<root>/<task>/<split>``."""
    from pool.store import PoolStore

    pool = PoolStore(root / task / split).load()
    gold = json.loads((root / task / split / "gold.json").read_text(encoding="utf-8"))
    mapping = LABEL_MAPS.get(task, {})
    index = {label: i for i, label in enumerate(pool.labels)}
    return pool, np.array([index[mapping.get(g, g)] for g in gold], dtype=np.int64)


def reviewed_rows(pool, gold: np.ndarray, budget: int, strategy: str, seed: int, round_size: int = 25) -> np.ndarray:
    """Rows reviewed after ``budget`` reviews: a seeded random draw, or simulate's loop replayed (the head is
    refitted after every ``round_size`` reviews and the next round is picked from its scores)."""
    if strategy == "random":
        return np.random.default_rng(seed).permutation(len(gold))[:budget]
    from annotate.adaptive import HeadConfig, adapt, pool_pseudo_labels
    from annotate.strategies import get_strategy

    chooser = get_strategy(strategy)
    rng = np.random.default_rng(seed)
    config = HeadConfig(seed=seed)
    pseudo = pool_pseudo_labels(pool.embeddings.astype(np.float64), pool.scores, config)
    reviewed: dict[int, int] = {}
    scores = pool.scores
    while len(reviewed) < budget:
        pending = np.setdiff1d(np.arange(len(gold)), np.fromiter(reviewed, dtype=np.int64, count=len(reviewed)))
        take = chooser.select(scores, pending, min(round_size, budget - len(reviewed)), rng)
        reviewed.update({int(r): int(gold[r]) for r in take})
        scores = adapt(pool.embeddings, pool.scores, pool.labels, reviewed=reviewed, config=config,
                       pseudo=pseudo).scores
    return np.fromiter(reviewed, dtype=np.int64, count=len(reviewed))


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(report: dict) -> str:
    facts = report["machine"]
    lines = ["# Fine-tuned encoder vs the frozen adapted head (issue 11)", "",
             f"- Command: `{report['command']}`",
             f"- CPU: {facts['cpu']} ({facts['cores']} cores; flags {facts['flags']}); torch threads "
             f"{facts['torch_threads']}; load average before {facts['load_average_before']}, after "
             f"{facts['load_average_after']} (other agents share the cores: timings are upper bounds)",
             f"- Settings: {report['settings']}", "",
             "| task | order | reviews | zero-shot | frozen head | fine-tuned | linear probe (holdout) | "
             "fine-tuned (holdout) | holdout n | fine-tune s (CPU s) | epochs | eval texts | eval s | pool rate texts/s | "
             "pool re-score s (extrapolated) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        cpu = f" ({r['finetune_cpu_seconds']:.0f})" if "finetune_cpu_seconds" in r else ""
        lines.append(
            f"| {r['task']} | {r['strategy']} | {r['reviewed']} | {r['zero_shot_accuracy']:.3f} | "
            f"{r['head_accuracy']:.3f} | **{r['finetuned_accuracy']:.3f}** | {_fmt(r['holdout_accuracy_probe'])} | "
            f"{_fmt(r['holdout_accuracy'])} | {r['holdout_n']} | {r['finetune_seconds']:.0f}{cpu} | "
            f"{r['epochs_done']} | {r['eval_n']} | {r['eval_seconds']:.0f} | {r['pool_texts_per_s']:.1f} | "
            f"{r['pool_rescore_seconds']:.0f} |")
    lines += ["", "Accuracy is on the evaluation split (its first `eval n` rows of a seeded permutation when "
              "`--eval-limit` is set); the frozen head is `annotate.adaptive.adapt` on the same reviews; holdout "
              "columns are on the reviews kept out of fine-tuning (the swap criterion).", ""]
    return "\n".join(lines)


@app.command()
def main(
    pools_root: Annotated[Path, typer.Option(help="Scored pools: <root>/<task>/{pool,eval} with gold.json.")] = Path("runs/issue11/pools"),
    tasks: Annotated[str, typer.Option(help="Comma-separated: ag_news, emotion, sst2.")] = "sst2,emotion,ag_news",
    budgets: Annotated[str, typer.Option(help="Comma-separated review counts.")] = "300,1000",
    strategies: Annotated[str, typer.Option(help="Comma-separated review orders: random, least-confidence, margin.")] = "random",
    recipe: Annotated[str, typer.Option(help="lpft or student (annotate.encoder_finetune).")] = "lpft",
    epochs: float = 3.0,
    batch_size: int = 16,
    lr: float = 5e-5,
    max_length: int = 64,
    holdout_fraction: float = 0.2,
    pool_soft: Annotated[int, typer.Option(help="Pool texts with the head's soft labels added to training "
                                           "(mixed objective); 0: reviews only.")] = 0,
    time_budget: Annotated[float, typer.Option(help="Seconds of training per fine-tune (capped steps).")] = 240.0,
    eval_limit: Annotated[int, typer.Option(help="Score at most this many evaluation texts (seeded sample; 0: all).")] = 0,
    pool_score_limit: Annotated[int, typer.Option(help="Pool texts scored to time the re-score rate.")] = 256,
    seed: int = 0,
    output_dir: Annotated[Path, typer.Option(help="Where encoder_finetune.{json,md} go.")] = Path("runs/encoder_finetune"),
) -> None:
    """Measure the fine-tuned encoder against the frozen head at each budget and write JSON and markdown."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from annotate.adaptive import HeadConfig, adapt
    from annotate.encoder_finetune import finetune_on_reviews

    facts = {**cpu_facts(), "torch_threads": torch.get_num_threads(),
             "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    typer.echo(f"CPU {facts['cpu']} ({facts['cores']} cores, flags {facts['flags']}), load average "
               f"{facts['load_average_before']}")
    settings = {"recipe": recipe, "epochs": epochs, "batch_size": batch_size, "lr": lr, "max_length": max_length,
                "holdout_fraction": holdout_fraction, "pool_soft": pool_soft, "time_budget": time_budget,
                "eval_limit": eval_limit, "seed": seed}
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"command": "python benchmarks/encoder_finetune_vs_head.py " + " ".join(sys.argv[1:]), "machine": facts,
              "settings": settings, "results": []}
    for task in [t.strip() for t in tasks.split(",") if t.strip()]:
        pool, pool_gold = load_split(pools_root, task, "pool")
        evaluation, eval_gold = load_split(pools_root, task, "eval")
        eval_rows = np.arange(len(eval_gold))
        if eval_limit and eval_limit < len(eval_rows):
            eval_rows = np.sort(np.random.default_rng(seed).permutation(len(eval_rows))[:eval_limit])
        eval_texts = [evaluation.texts[i] for i in eval_rows]
        zero_shot = float((evaluation.scores[eval_rows].argmax(1) == eval_gold[eval_rows]).mean())
        for strategy in [s.strip() for s in strategies.split(",") if s.strip()]:
            for budget in sorted(int(b) for b in budgets.split(",")):
                rows = reviewed_rows(pool, pool_gold, budget, strategy, seed)
                adapted = adapt(pool.embeddings, pool.scores, pool.labels,
                                reviewed={int(r): int(pool_gold[r]) for r in rows}, config=HeadConfig(seed=seed))
                head_scores = (adapted.head.predict_proba(evaluation.embeddings[eval_rows])
                               if adapted.head is not None else evaluation.scores[eval_rows])
                head_acc = float((head_scores.argmax(1) == eval_gold[eval_rows]).mean())
                soft = {}
                if pool_soft:
                    soft = dict(pool_texts=pool.texts, pool_soft_labels=adapted.scores, pool_limit=pool_soft)
                cpu_began = time.process_time()
                tuned = finetune_on_reviews([pool.texts[i] for i in rows], pool_gold[rows], pool.labels,
                                            embeddings_reviewed=pool.embeddings[rows], recipe=recipe, epochs=epochs,
                                            max_length=max_length, batch_size=batch_size, lr=lr, seed=seed,
                                            time_budget_seconds=time_budget, holdout_fraction=holdout_fraction,
                                            **soft)
                finetune_cpu = time.process_time() - cpu_began
                began = time.perf_counter()
                predicted = tuned.predict_proba(eval_texts).argmax(1)
                eval_seconds = time.perf_counter() - began
                sample = [pool.texts[i] for i in range(min(pool_score_limit, len(pool.texts)))]
                began = time.perf_counter()
                tuned.predict_proba(sample)
                rate = len(sample) / (time.perf_counter() - began)
                result = {"task": task, "strategy": strategy, "reviewed": int(len(rows)),
                          "zero_shot_accuracy": zero_shot, "head_accuracy": head_acc, "head_mode": adapted.report.mode,
                          "head_cv_accuracy": adapted.report.cv_accuracy,
                          "finetuned_accuracy": float((predicted == eval_gold[eval_rows]).mean()),
                          "holdout_accuracy": tuned.holdout_accuracy, "holdout_accuracy_probe": tuned.holdout_accuracy_probe,
                          "holdout_n": int(len(tuned.holdout_rows)), "finetune_seconds": tuned.train_seconds,
                          "finetune_cpu_seconds": finetune_cpu,
                          "epochs_done": tuned.history.get("epochs_done"), "steps_done": tuned.history.get("steps_done"),
                          "max_steps": tuned.history.get("max_steps"),
                          "probed_step_seconds": tuned.history.get("probed_step_seconds"),
                          "eval_n": len(eval_texts), "eval_seconds": eval_seconds, "pool_texts_per_s": rate,
                          "pool_size": len(pool.texts), "pool_rescore_seconds": len(pool.texts) / rate,
                          "load_average": [round(x, 2) for x in os.getloadavg()]}
                report["results"].append(result)
                typer.echo(json.dumps(result))
                facts["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
                (output_dir / "encoder_finetune.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
                (output_dir / "encoder_finetune.md").write_text(render(report), encoding="utf-8")
    typer.echo(f"wrote {output_dir / 'encoder_finetune.md'}")


if __name__ == "__main__":
    app()
