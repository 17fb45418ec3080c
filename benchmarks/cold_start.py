"""What a team sees first, task by task: zero-shot, bias-corrected zero-shot, and the adapted suggestions at 0 / 100 /
300 reviews (gold labels standing in for reviewers), under the loop's settings before and after the cold-start work.

Configurations (``--configs``):

* ``before``: no bias correction, least-confidence order (the loop before the cold-start work);
* ``floor``: the ``floor`` bias correction (:mod:`service.bias`), least-confidence order: the defaults;
* ``floor+desc``: ``floor`` with the label descriptions of ``benchmarks/label_descriptions/`` (written for this
  benchmark by the developer, once, before any was measured; the file of each task is named in the report);
* ``floor+typiclust``: ``floor`` with TypiClust's typical records for the first 50 reviews, then least-confidence
  (:class:`annotate.strategies.TypicalThenLeastConfidence`).

Tasks and splits (``--tasks``): the dev tasks of ``<data>/classification/dev_tasks`` (IMDB, TweetEval sentiment, CR,
and GoEmotions' rows with exactly one Ekman label) are split into a tune half and a report half by
``numpy.random.default_rng(0).permutation`` of their rows (``<task>:tune``, ``<task>:report``); inside a half,
``annotate.simulate.split_rows(holdout=0.3, seed=0)`` makes the pool and the evaluation part, capped at
``--pool-cap`` / ``--eval-cap`` rows. AG News (pool: the 8k train sample; evaluation: the test split), emotion
(train -> test) and SST-2 (train -> validation) are report tasks. Defaults were chosen on the tune halves only.

Each run is ``annotate.simulate.simulate`` in-process on pools scored once and cached (the embedding method of
``simulate``, packaged MiniLM); with ``--accept-precision`` every budget also certifies bulk acceptance. Reports:
``<output-dir>/<task>_<split>_<config>.json`` (the simulate report, the machine, the split) and ``table.md``.

    python benchmarks/cold_start.py --data-dir ../shared/data --output-dir benchmarks/results/cold_start
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import typer

from benchmarks.machine import cpu_facts  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0], rich_markup_mode=None, pretty_exceptions_enable=False)

SENTIMENT = "The sentiment of this review is {}."
DESCRIPTIONS = Path(__file__).resolve().parent / "label_descriptions"
AG_MAP = {"World": "world news", "Sports": "sports", "Business": "business", "Sci/Tech": "science and technology"}
#: task -> where its rows come from, its labels, template and descriptions file.
TASKS = {
    "imdb": {"file": "dev_tasks/imdb/test_sample5k.jsonl", "labels": ["negative", "positive"], "template": SENTIMENT,
             "descriptions": "review_sentiment.json", "dev": True},
    "tweeteval_sentiment": {"file": "dev_tasks/tweeteval_sentiment/test.jsonl",
                            "labels": ["negative", "neutral", "positive"],
                            "template": "The sentiment of this tweet is {}.", "descriptions": "tweet_sentiment.json",
                            "dev": True},
    "cr": {"file": "dev_tasks/cr/all.jsonl", "labels": ["negative", "positive"], "template": SENTIMENT,
           "descriptions": "review_sentiment.json", "dev": True},
    "goemotions_ekman": {"file": "dev_tasks/goemotions/test_part.jsonl", "gold": "ekman",
                         "labels": ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"],
                         "template": "This person feels {}.", "descriptions": "goemotions_ekman.json", "dev": True},
    "ag_news": {"file": "ag_news/train_unlabeled_8k_description_only.jsonl", "map": AG_MAP,
                "eval": ("ag_news/test.jsonl", ["title", "description"]),
                "labels": ["world news", "sports", "business", "science and technology"],
                "template": "This news article is about {}.", "descriptions": "news_topics.json"},
    "emotion": {"file": "emotion/train.jsonl", "eval": ("emotion/test.jsonl", ["text"]),
                "labels": ["sadness", "joy", "love", "anger", "fear", "surprise"], "template": "This person feels {}.",
                "descriptions": "emotion.json"},
    "sst2": {"file": "sst2/train.jsonl", "eval": ("sst2/validation.jsonl", ["text"]),
             "labels": ["negative", "positive"], "template": SENTIMENT, "descriptions": "review_sentiment.json"},
}
CONFIGS = {
    "before": {"bias_correction": "none", "strategy": "least-confidence", "descriptions": False},
    "floor": {"bias_correction": "floor", "strategy": "least-confidence", "descriptions": False},
    "floor+desc": {"bias_correction": "floor", "strategy": "least-confidence", "descriptions": True},
    "floor+typiclust": {"bias_correction": "floor", "strategy": "typiclust", "descriptions": False},
}


def _rows(path: Path, fields: list[str], gold: str) -> tuple[list[str], list[str]]:
    """Texts and gold labels of a JSON Lines file; rows whose gold is a list keep exactly one label or are dropped."""
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines(): texts hold U+2028
        if not line.strip():
            continue
        row = json.loads(line)
        value = row[gold]
        if isinstance(value, list):
            if len(value) != 1:
                continue
            value = value[0]
        texts.append(" ".join(str(row[f]).strip() for f in fields if row.get(f)))
        labels.append(str(value))
    return texts, labels


def task_split(data: Path, task: str, half: str, pool_cap: int, eval_cap: int):
    """``(pool texts, pool gold, eval texts, eval gold, facts)`` of one task and split (see the module docstring)."""
    from annotate.simulate import split_rows

    spec = TASKS[task]
    root = data / "classification"
    texts, gold = _rows(root / spec["file"], ["text"], spec.get("gold", "label"))
    mapping = spec.get("map", {})
    index = {label: i for i, label in enumerate(spec["labels"])}
    y = np.array([index[mapping.get(g, g)] for g in gold])
    facts = {"task": task, "split": half, "file": spec["file"], "rows": len(texts)}
    if spec.get("dev"):
        order = np.random.default_rng(0).permutation(len(texts))
        part = np.sort(order[: len(texts) // 2] if half == "tune" else order[len(texts) // 2:])
        texts, y = [texts[i] for i in part], y[part]
        pool, evaluation = split_rows(len(texts), holdout=0.3, pool_sample=pool_cap, eval_sample=eval_cap, seed=0)
        facts.update(half_rows=len(part), how="default_rng(0).permutation halves; split_rows(holdout=0.3, seed=0)")
        return ([texts[i] for i in pool], y[pool], [texts[i] for i in evaluation], y[evaluation], facts)
    eval_file, eval_fields = spec["eval"]
    eval_texts, eval_gold = _rows(root / eval_file, eval_fields, "label")
    ey = np.array([index[mapping.get(g, g)] for g in eval_gold])
    pool, _ = split_rows(len(texts), pool_sample=pool_cap, seed=0)
    keep, _ = split_rows(len(eval_texts), pool_sample=eval_cap, seed=0)
    facts.update(eval_file=eval_file, how="split_rows(pool_sample=cap, seed=0) of each file")
    return ([texts[i] for i in pool], y[pool], [eval_texts[i] for i in keep], ey[keep], facts)


@app.command()
def main(data_dir: Annotated[Path, typer.Option(help="The shared data folder (holds classification/).")]
         = Path("../shared/data"),
         output_dir: Annotated[Path, typer.Option(help="Where the reports and table.md go.")]
         = Path("benchmarks/results/cold_start"),
         tasks: Annotated[str, typer.Option(help="Comma-separated task:split (split: tune, report; the non-dev tasks "
                                            "take report only).")]
         = "imdb:tune,tweeteval_sentiment:tune,cr:tune,goemotions_ekman:tune,imdb:report,tweeteval_sentiment:report,"
           "cr:report,goemotions_ekman:report,ag_news:report,emotion:report,sst2:report",
         configs: Annotated[str, typer.Option(help=f"Comma-separated, of {', '.join(CONFIGS)}.")]
         = "before,floor,floor+desc,floor+typiclust",
         budgets: Annotated[str, typer.Option(help="Review budgets.")] = "0,100,300",
         pool_cap: Annotated[int, typer.Option(help="Most pool rows a task.")] = 1500,
         eval_cap: Annotated[int, typer.Option(help="Most evaluation rows a task.")] = 800,
         accept_precision: Annotated[float, typer.Option(help="Certify bulk acceptance at this precision at every "
                                                         "budget (0: not measured).")] = 0.95,
         seeds: Annotated[str, typer.Option(help="Comma-separated seeds of the review order, the head's folds, "
                                            "TypiClust's k-means and the certification sample; figures are means.")]
         = "0,1,2",
         cache_dir: Annotated[Path, typer.Option(help="simulate's cache of scored texts.")]
         = Path.home() / ".cache" / "zeroshot-preannotate" / "annotate" / "simulate") -> None:
    """Run every task and configuration, write each report and the table."""
    from annotate.adaptive import HeadConfig
    from annotate.cli import settings_from_env, zero_shot_scorer
    from annotate.simulate import AcceptanceSettings, LabelledSplit, scored_split, simulate
    from annotate.strategies import get_strategy

    logging.basicConfig(level=logging.WARNING)
    output_dir.mkdir(parents=True, exist_ok=True)
    budget_list = [int(b) for b in budgets.split(",")]
    machine = cpu_facts()
    typer.echo(f"machine: {machine['cpu']}, {machine['cores']} cores, flags {machine['flags']}, "
               f"load {machine['load_average']}")
    for item in tasks.split(","):
        task, half = item.split(":")
        spec = TASKS[task]
        pool_texts, pool_y, eval_texts, eval_y, facts = task_split(data_dir, task, half, pool_cap, eval_cap)
        for name in configs.split(","):
            config = CONFIGS[name]
            descriptions = (json.loads((DESCRIPTIONS / spec["descriptions"]).read_text(encoding="utf-8"))
                            if config["descriptions"] else None)
            scorer = zero_shot_scorer(settings_from_env(), spec["labels"], spec["template"], "embedding",
                                      label_descriptions=descriptions)
            key = {"labels": spec["labels"], "hypothesis_template": spec["template"], "method": "embedding",
                   "model": scorer.model_id, **({"label_descriptions": descriptions} if descriptions else {})}
            try:
                pool = LabelledSplit(*scored_split(pool_texts, scorer, cache_dir, key), pool_y)
                evaluation = LabelledSplit(*scored_split(eval_texts, scorer, cache_dir, key), eval_y)
            finally:
                scorer.close()
            acceptance = AcceptanceSettings(precision=accept_precision) if accept_precision else None
            began = time.perf_counter()
            runs = []
            for seed in [int(x) for x in seeds.split(",")]:
                runs.append(simulate(pool, spec["labels"], budget_list, strategy=get_strategy(config["strategy"]),
                                     evaluation=evaluation, seed=seed, progress=False, acceptance=acceptance,
                                     config=HeadConfig(seed=seed, bias_correction=config["bias_correction"])))
            report = summarize(runs)
            report.update(config=name, settings=config, descriptions_file=spec["descriptions"]
                          if descriptions else None, split=facts, machine=machine,
                          seconds=round(time.perf_counter() - began, 1),
                          command="python benchmarks/cold_start.py " + " ".join(sys.argv[1:]))
            path = output_dir / f"{task}_{half}_{name}.json"
            path.write_text(json.dumps(report, indent=1, default=float) + "\n", encoding="utf-8")
            curve = " / ".join(f"{e['eval_accuracy']:.3f}" for e in report["curve"])
            typer.echo(f"{task}:{half} {name}: zero-shot {report['zero_shot']['eval_accuracy']:.3f}, corrected "
                       f"{report['corrected_zero_shot']['eval_accuracy']:.3f}, {budgets}: {curve} "
                       f"({report['seconds']} s)")
    table(output_dir)


def summarize(runs: list[dict]) -> dict:
    """One report from the seeds' simulate reports: their zero-shot figures (the same for every seed), the mean of
    each budget's accuracy, macro-F1 and accepted share and precision, and every run under ``runs``."""
    first = runs[0]
    curve = []
    for j, entry in enumerate(first["curve"]):
        at = [r["curve"][j] for r in runs]
        mean = {"reviewed": entry["reviewed"], "eval_accuracy": float(np.mean([e["eval_accuracy"] for e in at])),
                "eval_macro_f1": float(np.mean([e["eval_macro_f1"] for e in at])),
                "eval_accuracy_per_seed": [round(e["eval_accuracy"], 4) for e in at]}
        if "accept" in entry:
            precisions = [e["accept"]["precision"] for e in at if e["accept"]["precision"] is not None]
            mean["accept"] = {"share": float(np.mean([e["accept"]["share"] for e in at])),
                              "precision": float(np.mean(precisions)) if precisions else None,
                              "min_precision": float(min(precisions)) if precisions else None,
                              "certification_reviews": float(np.mean([e["accept"]["certification_reviews"]
                                                                      for e in at]))}
        curve.append(mean)
    return {"zero_shot": first["zero_shot"], "corrected_zero_shot": first["corrected_zero_shot"],
            "pool_size": first["pool_size"], "eval_size": first["eval_size"], "labels": first["labels"],
            "seeds": len(runs), "curve": curve, "runs": runs}


def table(output_dir: Path) -> str:
    """The Markdown table of every report in ``output_dir`` (also written to ``table.md``)."""
    reports = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(output_dir.glob("*_*.json"))
               if p.name != "table.json"]
    reports = [r for r in reports if "config" in r]
    if not reports:
        return ""
    budgets = [e["reviewed"] for e in reports[0]["curve"]]
    head = ("| task | split | config | zero-shot | corrected zero-shot | "
            + " | ".join(f"{b} reviews" for b in budgets) + " | accepted at " + str(budgets[-1]) + " | real precision |")
    lines = [head, "|" + "---|" * (7 + len(budgets))]
    order = {name: i for i, name in enumerate(CONFIGS)}
    for r in sorted(reports, key=lambda r: (r["split"]["split"] != "tune", r["split"]["task"],
                                            order.get(r["config"], 9))):
        last = r["curve"][-1].get("accept", {})
        share = f"{100 * last['share']:.1f}%" if last else "-"
        precision = (f"{last['precision']:.3f} (min {last['min_precision']:.3f})"
                     if last and last.get("precision") is not None else "-")
        lines.append(f"| {r['split']['task']} | {r['split']['split']} | {r['config']} | "
                     f"{r['zero_shot']['eval_accuracy']:.3f} | {r['corrected_zero_shot']['eval_accuracy']:.3f} | "
                     + " | ".join(f"{e['eval_accuracy']:.3f}" for e in r["curve"]) + f" | {share} | {precision} |")
    machine = reports[0]["machine"]
    text = "\n".join(lines) + (f"\n\nMeans over {reports[0].get('seeds', 1)} seeds. Machine: {machine['cpu']}, "
                               f"{machine['cores']} cores, flags {machine['flags']}; load average "
                               f"{machine['load_average']} at the first run.\n")
    (output_dir / "table.md").write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    app()
