"""Long texts: truncation against ``long_text="chunks"`` on AG News articles hidden at the end of long documents.

Each long text is built from the AG News test split: filler is put one after another until it fills more than
the widest model window (the NLI teacher's 512 tokens; the encoder reads 256), and the labelled article comes last -
so truncation never sees it and only chunks can. The filler (``--filler``) is either AG News articles of the
*other* classes (``other-classes``: the document is mostly about other topics, the label article one of ~13), or
SST-2 movie reviews (``sst2``: text with no news topic, so the label article is the only topical part). Every method
(nli, embedding, ensemble) is scored on the same texts, in process, through the service's own loading and
scoring code (:func:`service.loader.load_methods`, the methods' ``__call__`` with ``long_text``):

- ``article alone``: the labelled article by itself (what the methods reach on short texts: the ceiling);
- ``truncate``: the long text, read up to the window (the default);
- ``chunks, single-label``: overlapping windows, mean of log-probabilities renormalised;
- ``chunks, multi-label``: overlapping windows, max per label (the label with the highest score is the prediction).

Accuracy is top-1 over the 4 AG News labels (``This text is about {}.``; World, Sports, Business, Sci/Tech); top-2
says whether the label is at least among the two best. s/text is the wall time of the whole set over its size
(requests of 16 texts). Prints the CPU model and flags and the load average (the machine may be shared).

    .venv/bin/python benchmarks/long_text.py --data-dir ../shared/data --n 100 --output-dir runs/long_text
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_facts  # noqa: E402

logger = logging.getLogger("benchmarks.long_text")
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
TEMPLATE = "This text is about {}."
MODES = (("article alone", "truncate", False), ("truncate", "truncate", False),
         ("chunks, single-label", "chunks", False), ("chunks, multi-label", "chunks", True))


def read_ag_news(path: Path) -> list[tuple[str, str]]:
    """``(title + " " + description, label)`` of every AG News row."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            rows.append((f"{row['title'].strip()} {row['description'].strip()}", row["label"]))
    return rows


def build_long_texts(rows: list[tuple[str, str]], n: int, *, tokenizer, filler_tokens: int, seed: int,
                     neutral: list[str] | None = None) -> list[dict]:
    """``n`` documents: filler of more than ``filler_tokens`` tokens (other-class articles, or the ``neutral``
    texts when given), then the labelled article."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {}
    for text, label in rows:
        by_label.setdefault(label, []).append(text)
    documents = []
    for text, label in rng.sample(rows, n):
        others = neutral or [t for other, texts in by_label.items() if other != label for t in texts]
        filler, count = [], 0
        while count <= filler_tokens:
            article = rng.choice(others)
            filler.append(article)
            count += len(tokenizer.tokenize(article)) + 1
        documents.append({"article": text, "label": label, "long": " ".join([*filler, text]),
                          "filler_tokens": count})
    return documents


def score(method, texts: list[str], *, long_text: str, multi_label: bool, batch: int = 16) -> tuple[list, float]:
    """Ranked labels of every text, and the seconds it took."""
    started = time.perf_counter()
    ranked = []
    for start in range(0, len(texts), batch):
        results = method(texts[start:start + batch], LABELS, hypothesis_template=TEMPLATE, multi_label=multi_label,
                         long_text=long_text, max_windows=64)
        ranked += [r.labels for r in results]
    return ranked, time.perf_counter() - started


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="The shared data folder (holds classification/ag_news/test.jsonl).")]
    = Path("../shared/data"),
    n: Annotated[int, typer.Option(help="Long texts built (and labelled articles scored).")] = 100,
    method: Annotated[Optional[list[str]], typer.Option(help="nli, embedding, ensemble (repeatable; default all).")]
    = None,
    engine: Annotated[str, typer.Option(help="Engine of both models (ZSC_ENGINE).")] = "onnxruntime",
    threads: Annotated[Optional[int], typer.Option(help="Engine threads (default: all cores).")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    filler: Annotated[str, typer.Option(help="other-classes (AG News articles of the other labels) or sst2 (movie "
                                        "reviews: no news topic).")] = "other-classes",
    output_dir: Annotated[Path, typer.Option(help="Where long_text.json and long_text.md go.")] = Path("runs/long_text"),
) -> None:
    """Accuracy and time per text of truncation and chunks, per method, on long AG News documents."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    path = data_dir / "classification" / "ag_news" / "test.jsonl"
    if not path.is_file():
        typer.echo(f"error: {path} not found: pass --data-dir (the folder holding classification/)", err=True)
        raise typer.Exit(2)
    from service.config import Settings
    from service.loader import load_methods

    settings = Settings(engine=engine, num_threads=threads, batch_wait_ms=0)
    served = load_methods(settings)
    nli_method = served.methods["nli"]
    tokenizer, nli_window = nli_method.window(LABELS, hypothesis_template=TEMPLATE)
    widest = max(nli_window, served.methods["embedding"].window(LABELS, hypothesis_template=TEMPLATE)[1])
    neutral = None
    if filler == "sst2":
        sst2 = data_dir / "classification" / "sst2" / "test.jsonl"
        neutral = [json.loads(line)["text"] for line in sst2.open(encoding="utf-8")]
    elif filler != "other-classes":
        typer.echo(f"error: --filler {filler!r}: choose other-classes or sst2", err=True)
        raise typer.Exit(2)
    documents = build_long_texts(read_ag_news(path), n, tokenizer=tokenizer, filler_tokens=widest, seed=seed,
                                 neutral=neutral)
    gold = [d["label"] for d in documents]
    facts = {**cpu_facts(), "threads": threads or os.cpu_count(), "engine": engine, "n": n, "seed": seed,
             "filler": filler,
             "widest_window_tokens": widest,
             "mean_long_text_tokens": float(np.mean([len(tokenizer.tokenize(d["long"])) for d in documents])),
             "load_average_before": os.getloadavg()}
    rows = []
    for name in method or ["embedding", "nli", "ensemble"]:
        scorer = served.methods[name]
        windows = np.mean([len(scorer.windows(d["long"], LABELS, hypothesis_template=TEMPLATE, max_windows=64)[0])
                           for d in documents])
        for mode, long_text, multi in MODES:
            texts = [d["article"] if mode == "article alone" else d["long"] for d in documents]
            ranked, seconds = score(scorer, texts, long_text=long_text, multi_label=multi)
            row = {"method": name, "mode": mode, "accuracy": float(np.mean([r[0] == g for r, g in zip(ranked, gold)])),
                   "top2": float(np.mean([g in r[:2] for r, g in zip(ranked, gold)])),
                   "s_per_text": seconds / len(texts), "windows_per_text": float(windows) if long_text == "chunks"
                   else 1.0, "load_average": os.getloadavg()[0]}
            rows.append(row)
            logger.info("%s", row)
    served.close()
    facts["load_average_after"] = os.getloadavg()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "long_text.json").write_text(json.dumps({"facts": facts, "rows": rows}, indent=2))
    lines = [f"CPU: {facts['cpu']} ({facts['cores']} cores, flags: {facts['flags']}); threads {facts['threads']}; "
             f"engine {engine}; {n} long texts of {facts['mean_long_text_tokens']:.0f} tokens on average (label "
             f"article after {widest}+ tokens of filler: {filler}); load average before "
             f"{', '.join(f'{x:.2f}' for x in facts['load_average_before'])}, after "
             f"{', '.join(f'{x:.2f}' for x in facts['load_average_after'])}", "",
             "| method | mode | accuracy | top-2 | s/text | windows/text | load (1 min) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['mode']} | {r['accuracy']:.3f} | {r['top2']:.3f} | {r['s_per_text']:.4f} | "
              f"{r['windows_per_text']:.2f} | {r['load_average']:.2f} |" for r in rows]
    (output_dir / "long_text.md").write_text("\n".join(lines) + "\n")
    typer.echo("\n".join(lines))


if __name__ == "__main__":
    app()
