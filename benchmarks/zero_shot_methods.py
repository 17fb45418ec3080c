"""Zero-shot methods side by side, in one run: accuracy, macro-F1, calibration and speed.

For ``nli``, ``embedding`` and ``ensemble`` (as served: :func:`service.loader.load_methods`, with the
calibrations stored with the models) on the full AG News test split (K = 4) and the emotion test
split (K = 6), two hypothesis templates each:

- accuracy and macro-F1 (scikit-learn);
- ECE (15 bins) of the top score before calibration (raw scores: the pipeline's for NLI, ``softmax(cos)``
  for embedding, an unweighted geometric mean for the ensemble) and after (the stored calibration);
- texts/s: wall time of each method's forward passes over the split. The ensemble runs exactly the
  NLI and embedding passes and combines them, so its time is their sum (its combination costs
  microseconds); the K sweep below times the real ensemble call;
- texts/s as K grows from 4 to 64 on the first 64 AG News test texts (extra labels: this project's
  generic topic list, ``train/topics.txt``), hypothesis cache emptied before each call so the
  embedding method pays for its K label passes.

Run (about 30 minutes on 2 cores)::

    python benchmarks/zero_shot_methods.py --data-dir ../shared/data --output-dir runs/methods

Writes ``methods.json``, ``methods.md`` (the tables) and ``texts_per_s_vs_k.png`` to ``--output-dir``.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from service.calibration import IDENTITY, Calibration, expected_calibration_error
from service.config import Settings
from service.ensemble import combine
from service.loader import load_methods
from train.calibrate import collect_raw
from train.evaluate import AG_NEWS_DESCRIPTIVE, AG_NEWS_LABELS, EMOTION_LABELS, ZeroShotTask, read_labelled

logger = logging.getLogger("benchmarks.zero_shot_methods")
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])

METHOD_NAMES = ("nli", "embedding", "ensemble")
K_SWEEP = (4, 8, 16, 32, 64)


def tasks(data_dir: Path) -> list[ZeroShotTask]:
    """AG News test (2 settings) and emotion test (2 templates)."""
    ag = data_dir / "classification" / "ag_news" / "test.jsonl"
    emotion = data_dir / "classification" / "emotion" / "test.jsonl"
    ag_identity = {label: label for label in AG_NEWS_LABELS}
    emotion_identity = {label: label for label in EMOTION_LABELS}
    return [
        ZeroShotTask("ag_news", ag, "This text is about {}.", ag_identity, ("title", "description")),
        ZeroShotTask("ag_news", ag, "This news article is about {}.", AG_NEWS_DESCRIPTIVE, ("title", "description")),
        ZeroShotTask("emotion", emotion, "This text is about {}.", emotion_identity),
        ZeroShotTask("emotion", emotion, "This person feels {}.", emotion_identity),
    ]


def method_probabilities(methods: dict, raw: dict, *, calibrated: bool) -> dict[str, np.ndarray]:
    """Single-label probabilities of the three methods from the two raw outputs, calibrated or raw."""
    out = {}
    for role in ("nli", "embedding"):
        method = methods[role]
        stored = method.calibration
        method.calibration = stored if calibrated else IDENTITY
        try:
            out[role] = method.probabilities(raw[role], multi_label=False)
        finally:
            method.calibration = stored
    ensemble = methods["ensemble"].calibration if calibrated else Calibration()
    out["ensemble"] = combine(out["nli"], out["embedding"], ensemble, multi_label=False)
    return out


def score_task(methods: dict, task: ZeroShotTask, limit: int | None) -> list[dict]:
    """One row per method for one task."""
    from sklearn.metrics import accuracy_score, f1_score

    outputs = collect_raw(methods, task, limit=limit)
    raw_probs = method_probabilities(methods, outputs.raw, calibrated=False)
    calibrated = method_probabilities(methods, outputs.raw, calibrated=True)
    seconds = {**outputs.seconds, "ensemble": outputs.seconds["nli"] + outputs.seconds["embedding"]}
    n, k = len(outputs.gold), len(task.verbalizer)
    rows = []
    for name in METHOD_NAMES:
        predictions = calibrated[name].argmax(axis=1)
        rows.append({
            "dataset": task.dataset, "template": task.template, "labels": list(task.verbalizer.values()), "k": k,
            "n": n, "method": name,
            "accuracy": float(accuracy_score(outputs.gold, predictions)),
            "macro_f1": float(f1_score(outputs.gold, predictions, labels=list(range(k)), average="macro")),
            "ece_raw": expected_calibration_error(raw_probs[name], outputs.gold),
            "ece_calibrated": expected_calibration_error(calibrated[name], outputs.gold),
            "mean_top_score": float(calibrated[name].max(axis=1).mean()),
            "seconds": round(seconds[name], 2), "texts_per_s": round(n / seconds[name], 2),
        })
        logger.info("%s %r %s: accuracy %.4f, ECE %.4f -> %.4f, %.1f texts/s", task.dataset, task.template, name,
                    rows[-1]["accuracy"], rows[-1]["ece_raw"], rows[-1]["ece_calibrated"], rows[-1]["texts_per_s"])
    return rows


def k_sweep(methods: dict, texts: list[str], labels: list[str], template: str) -> list[dict]:
    """texts/s of each method's full ``scores`` call for K = 4 .. 64 labels (hypothesis cache emptied each time)."""
    rows = []
    for name in METHOD_NAMES:
        for k in K_SWEEP:
            methods["embedding"].cache.clear()
            started = time.perf_counter()
            methods[name].scores(texts, labels[:k], hypothesis_template=template)
            seconds = time.perf_counter() - started
            rows.append({"method": name, "k": k, "n": len(texts), "seconds": round(seconds, 3),
                         "texts_per_s": round(len(texts) / seconds, 2)})
            logger.info("K sweep %s K=%d: %.2f texts/s", name, k, rows[-1]["texts_per_s"])
    return rows


def markdown(results: list[dict], sweep: list[dict]) -> str:
    lines = ["| dataset | template (labels) | K | method | accuracy | macro-F1 | ECE raw | ECE calibrated | texts/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['dataset']} ({r['n']}) | `{r['template']}` ({', '.join(r['labels'])}) | {r['k']} | "
                     f"{r['method']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['ece_raw']:.4f} | "
                     f"{r['ece_calibrated']:.4f} | {r['texts_per_s']:.1f} |")
    lines += ["", "| method | " + " | ".join(f"K={k}" for k in K_SWEEP) + " |", "|---|" + "---|" * len(K_SWEEP)]
    for name in METHOD_NAMES:
        rates = {r["k"]: r["texts_per_s"] for r in sweep if r["method"] == name}
        lines.append(f"| {name} | " + " | ".join(f"{rates[k]:.1f}" for k in K_SWEEP) + " |")
    return "\n".join(lines) + "\n"


def plot(sweep: list[dict], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in METHOD_NAMES:
        rows = [r for r in sweep if r["method"] == name]
        ax.plot([r["k"] for r in rows], [r["texts_per_s"] for r in rows], marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="candidate labels K", ylabel="texts/s",
           title="Zero-shot throughput vs number of labels (2 CPU cores)")
    ax.set_xticks(list(K_SWEEP), [str(k) for k in K_SWEEP])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="The shared data folder (holds classification/).")] = Path("../shared/data"),
    output_dir: Annotated[Path, typer.Option(help="Where methods.json / methods.md / the plot go.")] = Path("runs/methods"),
    engine: Annotated[str, typer.Option(help="auto, deepsparse, onnxruntime or torch (both models).")] = "onnxruntime",
    limit: Annotated[int, typer.Option(help="First N texts of each test split (0: all).")] = 0,
    sweep_texts: Annotated[int, typer.Option(help="Texts of the K sweep.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Pairs (nli) or texts (embedding) per forward pass.")] = 64,
) -> None:
    """Accuracy, macro-F1, ECE and texts/s of nli, embedding and ensemble; texts/s for K = 4..64."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    present = [t for t in tasks(data_dir) if t.path.is_file()]
    if not present:
        typer.echo(f"error: no AG News / emotion test file under {data_dir}/classification", err=True)
        raise typer.Exit(1)
    served = load_methods(Settings(engine=engine, batch_size=batch_size))
    try:
        started = time.perf_counter()
        results = [row for task in present for row in score_task(served.methods, task, limit or None)]
        ag = next(t for t in present if t.dataset == "ag_news")
        texts, _ = read_labelled(ag.path, ag.text_fields, sweep_texts)
        topics = [line.strip() for line in (Path(__file__).resolve().parents[1] / "train" / "topics.txt").read_text()
                  .splitlines() if line.strip() and not line.startswith("#")]
        labels = list(AG_NEWS_DESCRIPTIVE.values()) + [t for t in topics if t not in AG_NEWS_DESCRIPTIVE.values()]
        sweep = k_sweep(served.methods, texts, labels, "This news article is about {}.")
        info = served.info()
    finally:
        served.close()
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"results": results, "k_sweep": sweep, "models": {r: {k: info["models"][r].get(k) for k in
                                                                    ("model_id", "fingerprint", "engine", "calibration")}
                                                                for r in info["models"]},
              "ensemble": info["methods"].get("ensemble"), "machine": platform.processor() or platform.machine(),
              "wall_seconds": round(time.perf_counter() - started, 1)}
    (output_dir / "methods.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    table = markdown(results, sweep)
    (output_dir / "methods.md").write_text(table, encoding="utf-8")
    plot(sweep, output_dir / "texts_per_s_vs_k.png")
    typer.echo(table)
    typer.echo(f"wrote {output_dir}/methods.json, methods.md, texts_per_s_vs_k.png")


if __name__ == "__main__":
    sys.exit(app())
