"""The sparse issue's benchmark: what a user would otherwise run against this service, side by side, in one run.

Same inputs for every configuration: the first ``--ag-news`` AG News test texts x 4 labels (``This text is
about {}.``) and the emotion test texts x 6 labels (``This person feels {}.``), sent as requests of
``--request-texts`` texts. For each configuration: pairs/s (all pairs / wall time of all requests), p50 / p95
latency of a request, peak RSS of the process that runs the model, and accuracy on the same texts.

1. ``hf-pipeline``: transformers ``pipeline("zero-shot-classification")`` on the dense fp32 teacher in
   PyTorch, called the way its documentation shows (default batch size) - the baseline;
   ``hf-pipeline-b32``: the same with ``batch_size=32``, for fairness;
2. ``ort-dense-fp32``; 3. ``ort-sparse-int8`` (the int8 form measured fastest on ONNX Runtime);
4. ``ds-dense-fp32``; 5. ``ds-sparse-fp32``; 6. ``ds-sparse-int8`` (the ``integer`` form) - each through this
   project's zero-shot core (dynamic padding, length-sorted batches; DeepSparse with (batch, seq) buckets);
7. ``ds-pipeline``: DeepSparse's own ``Pipeline.create(task="zero_shot_text_classification")`` on the shipped
   model's DeepSparse graph - the seed system;
8. ``service-http``: ``python -m service`` with the shipped default (``engine=auto``) over real HTTP with
   ``--clients`` concurrent clients (micro-batching merges their requests).
9. ``service-http-baseline``: the same, with the service of an older checkout (``--baseline-src``), on its own
   cache: the code before a change, side by side with it in one run.

With ``--check-auto``, ``engine=auto``'s timing (``service.engines.timing_shapes``, no budget: speed alone) is run
for the shipped model in its own child process, and its pick is set against the engine that wins this run on
real texts (``ort-sparse-int8`` against ``ds-sparse-int8``): they must agree (issue 23).

Every configuration runs in its own process (peak RSS is that process's ``ru_maxrss``; for the service, the
server's), with the same thread count (``--threads``) for PyTorch, ONNX Runtime and DeepSparse. Speed ratios
are to configuration 1 measured in the same run. Not run by CI (minutes, and a quiet machine is needed)::

    python benchmarks/sparse_speed.py --data-dir ../shared/data --output-dir benchmarks/results/sparse_speed
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_facts  # noqa: E402

logger = logging.getLogger("benchmarks.sparse_speed")
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])

CONFIGS = ("hf-pipeline", "hf-pipeline-b32", "ort-dense-fp32", "ort-sparse-int8", "ds-dense-fp32",
           "ds-sparse-fp32", "ds-sparse-int8", "ds-pipeline", "service-http", "service-http-baseline")
DESCRIPTIONS = {
    "hf-pipeline": "transformers pipeline, dense fp32, PyTorch (default batch size)",
    "hf-pipeline-b32": "transformers pipeline, dense fp32, PyTorch, batch_size=32",
    "ort-dense-fp32": "ONNX Runtime, dense fp32",
    "ort-sparse-int8": "ONNX Runtime, sparse int8",
    "ds-dense-fp32": "DeepSparse, dense fp32",
    "ds-sparse-fp32": "DeepSparse, sparse fp32",
    "ds-sparse-int8": "DeepSparse, sparse int8",
    "ds-pipeline": "DeepSparse's own zero-shot Pipeline, shipped model (sparse int8)",
    "service-http": "this service over HTTP, concurrent clients (engine=auto, shipped model)",
    "service-http-baseline": "the --baseline-src checkout's service over HTTP, the same clients and settings",
}
TASKS = (
    {"dataset": "ag_news", "file": "classification/ag_news/test.jsonl", "fields": ("title", "description"),
     "labels": ("World", "Sports", "Business", "Sci/Tech"), "template": "This text is about {}."},
    {"dataset": "emotion", "file": "classification/emotion/test.jsonl", "fields": ("text",),
     "labels": ("sadness", "joy", "love", "anger", "fear", "surprise"), "template": "This person feels {}."},
)


def load_tasks(data_dir: Path, ag_news: int, emotion: int | None) -> list[dict]:
    """The benchmark inputs: texts, gold labels, candidate labels, template per dataset."""
    from train.evaluate import read_labelled

    out = []
    for task in TASKS:
        limit = ag_news if task["dataset"] == "ag_news" else emotion
        texts, gold = read_labelled(data_dir / task["file"], task["fields"], limit)
        out.append({**task, "texts": texts, "gold": gold})
    return out


def requests_of(task: dict, size: int) -> list[list[str]]:
    return [task["texts"][i:i + size] for i in range(0, len(task["texts"]), size)]


# --- one configuration, in its own process -------------------------------------------------------------


def _scorer(config: str, models: dict, threads: int, batch_size: int):
    """A function ``(texts, labels, template) -> (n, k) scores in label order`` for a configuration."""
    if config.startswith("hf-pipeline"):
        import torch
        from transformers import pipeline

        torch.set_num_threads(threads)
        kwargs = {"batch_size": 32} if config == "hf-pipeline-b32" else {}
        pipe = pipeline("zero-shot-classification", model=str(models["dense"]), device=-1, **kwargs)

        def score(texts, labels, template):
            out = pipe(texts, candidate_labels=list(labels), hypothesis_template=template)
            out = [out] if isinstance(out, dict) else out
            return np.array([[dict(zip(r["labels"], r["scores"]))[label] for label in labels] for r in out])
        return score
    if config == "ds-pipeline":
        from deepsparse.legacy import Pipeline

        pipe = Pipeline.create(task="zero_shot_text_classification", model_path=str(models["ds_pipeline_dir"]),
                               model_scheme="mnli", batch_size=8, num_cores=threads, sequence_length=128,
                               model_config={"entailment_index": models["entailment_id"],
                                             "contradiction_index": models["contradiction_id"]})

        def score(texts, labels, template):
            out = pipe(sequences=texts, labels=list(labels), hypothesis_template=template)
            return np.array([[dict(zip(lab, sc))[label] for label in labels] for lab, sc in zip(out.labels, out.scores)])
        return score
    from service.config import Settings
    from service.loader import load_methods

    engine, which, int8 = {"ort-dense-fp32": ("onnxruntime", "dense", "none"),
                           "ort-sparse-int8": ("onnxruntime", "sparse", "auto"),
                           "ds-dense-fp32": ("deepsparse", "dense", "none"),
                           "ds-sparse-fp32": ("deepsparse", "sparse", "none"),
                           "ds-sparse-int8": ("deepsparse", "sparse", "integer")}[config]
    served = load_methods(Settings(model=str(models[which]), embedding_model="none", method="nli", engine=engine,
                                   quantization=int8, num_threads=threads, batch_size=batch_size, batch_wait_ms=0,
                                   calibrate=False))
    method = served.methods["nli"]
    score = lambda texts, labels, template: method.scores(texts, list(labels), hypothesis_template=template)  # noqa: E731
    score.facts = {"engine": served.engine_name("nli"), "int8": served.models["nli"].engine.int8,
                   "sparsity": served.models["nli"].info.get("sparsity")}
    return score


def run_one(config: str, tasks: list[dict], models: dict, threads: int, request_texts: int, batch_size: int) -> dict:
    """Time one in-process configuration on every task (one warm-up request first)."""
    score = _scorer(config, models, threads, batch_size)
    result = {"config": config, "tasks": {}, "facts": getattr(score, "facts", {})}
    for task in tasks:
        reqs = requests_of(task, request_texts)
        score(reqs[0], task["labels"], task["template"])  # warm-up (compiles a first DeepSparse bucket, etc.)
        latencies, predictions = [], []
        began = time.perf_counter()
        for texts in reqs:
            t0 = time.perf_counter()
            scores = score(texts, task["labels"], task["template"])
            latencies.append(time.perf_counter() - t0)
            predictions.extend(task["labels"][i] for i in scores.argmax(axis=1))
        result["tasks"][task["dataset"]] = _summary(task, predictions, latencies, time.perf_counter() - began)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _summary(task: dict, predictions: list[str], latencies: list[float], wall: float) -> dict:
    pairs = len(task["texts"]) * len(task["labels"])
    return {"texts": len(task["texts"]), "pairs": pairs, "seconds": round(wall, 3), "pairs_per_s": round(pairs / wall, 1),
            "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 1),
            "p95_ms": round(1000 * float(np.percentile(latencies, 95)), 1),
            "accuracy": round(float(np.mean(np.array(predictions) == np.array(task["gold"]))), 4)}


# --- the service over HTTP -----------------------------------------------------------------------------


def run_service(tasks: list[dict], models: dict, threads: int, request_texts: int, clients: int,
                batch_size: int, src: Path | None = None) -> dict:
    """Start ``python -m service`` (shipped default NLI model, engine=auto), drive it with concurrent clients;
    ``src``: another checkout whose ``service`` package runs instead of this one's (on its own cache)."""
    import httpx

    from benchmarks.service_process import ServiceProcess

    settings = {"ZSC_MODEL": "default", "ZSC_EMBEDDING_MODEL": "none", "ZSC_METHOD": "nli", "ZSC_ENGINE": "auto",
                "ZSC_NUM_THREADS": str(threads), "ZSC_BATCH_SIZE": str(batch_size), "ZSC_CALIBRATE": "false"}
    if src is not None:
        settings["ZSC_CACHE_DIR"] = str(Path(src) / ".zsc-cache")  # its own graphs and auto records
    with (ServiceProcess(settings, cwd=src) if src is not None else ServiceProcess(settings)) as service:
        url = service.url
        info = httpx.get(url + "/info", timeout=10).json()
        result = {"config": "service-http-baseline" if src is not None else "service-http", "tasks": {},
                  "clients": clients, "src": str(src) if src is not None else None,
                  "facts": {"engine": info["models"]["nli"]["engine"], "int8": info["models"]["nli"].get("int8"),
                            "sparsity": info["models"]["nli"].get("sparsity"),
                            "auto_selection": info["models"]["nli"].get("auto_selection")}}
        with httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=clients)) as client:
            for task in tasks:
                reqs = requests_of(task, request_texts)
                body = lambda texts: {"texts": texts, "labels": list(task["labels"]),  # noqa: E731
                                      "hypothesis_template": task["template"], "method": "nli"}
                client.post("/zero-shot", json=body(reqs[0])).raise_for_status()  # warm-up
                latencies = [0.0] * len(reqs)
                answers: list = [None] * len(reqs)
                cursor = iter(range(len(reqs)))
                lock = threading.Lock()

                def worker():
                    while True:
                        with lock:
                            i = next(cursor, None)
                        if i is None:
                            return
                        t0 = time.perf_counter()
                        response = client.post("/zero-shot", json=body(reqs[i]))
                        latencies[i] = time.perf_counter() - t0
                        response.raise_for_status()
                        answers[i] = response.json()["results"]

                began = time.perf_counter()
                threads_ = [threading.Thread(target=worker) for _ in range(clients)]
                for t in threads_:
                    t.start()
                for t in threads_:
                    t.join()
                wall = time.perf_counter() - began
                predictions = [r["labels"][0] for answer in answers for r in answer]
                result["tasks"][task["dataset"]] = _summary(task, predictions, latencies, wall)
        result["batching"] = httpx.get(url + "/info", timeout=10).json()["models"]["nli"].get("batching")
    result["peak_rss_mb"] = service.peak_rss_mb  # the server's own peak RSS
    return result


# --- orchestration ---------------------------------------------------------------------------------------


def prepare_models(work: Path, cache_dir: Path) -> dict:
    """Paths every configuration needs: the dense and shipped (sparse) teachers, and a DeepSparse pipeline dir."""
    from service.onnx_export import onnx_for
    from service.sources import DEFAULT_MODEL, DENSE_MODEL, resolve_model

    dense, sparse = resolve_model(DENSE_MODEL), resolve_model(DEFAULT_MODEL)
    graph = onnx_for(sparse, cache_dir, int8="integer" if sparse.quantization() else "none")
    pipeline_dir = work / "ds_pipeline_model"
    pipeline_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(graph, pipeline_dir / "model.onnx")  # DeepSparse rewrites input shapes in place: its own copy
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (sparse.path / name).is_file():
            shutil.copyfile(sparse.path / name, pipeline_dir / name)
    label2id = sparse.config()["label2id"]
    return {"dense": str(dense.path), "sparse": str(sparse.compact_path or sparse.path),
            "ds_pipeline_dir": str(pipeline_dir), "entailment_id": int(label2id["entailment"]),
            "contradiction_id": int(label2id["contradiction"])}


def _spawn(args: list[str]) -> tuple[dict, float]:
    """Run this script for one configuration in a child process; its JSON result and peak RSS (MB)."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as out:
        path = out.name
    proc = subprocess.Popen([sys.executable, __file__, *args, "--result-file", path], cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"configuration {args[1]} failed (exit {os.waitstatus_to_exitcode(status)})")
    result = json.loads(Path(path).read_text())
    os.unlink(path)
    return result, usage.ru_maxrss / 1024


def render(results: list[dict], meta: dict) -> str:
    """The Markdown table: one row per (configuration, dataset), speed ratios to the first configuration."""
    base = {d: results[0]["tasks"][d]["pairs_per_s"] for d in results[0]["tasks"]}
    lines = [f"CPU: {meta['cpu']} ({meta['cores']} cores, flags: {meta['flags']}); threads {meta['threads']}; "
             f"requests of {meta['request_texts']} texts; service: {meta['clients']} concurrent clients.", "",
             "| # | configuration | dataset (pairs) | pairs/s | × baseline | p50 ms | p95 ms | peak RSS MB | accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for index, r in enumerate(results, 1):
        for dataset, t in r["tasks"].items():
            lines.append(f"| {index} | {DESCRIPTIONS[r['config']]} | {dataset} ({t['pairs']}) | {t['pairs_per_s']} | "
                         f"{t['pairs_per_s'] / base[dataset]:.2f} | {t['p50_ms']} | {t['p95_ms']} | "
                         f"{r['peak_rss_mb']:.0f} | {t['accuracy']:.4f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["config"] for r in results]
    datasets = list(results[0]["tasks"])
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(datasets)
    for j, dataset in enumerate(datasets):
        base = results[0]["tasks"][dataset]["pairs_per_s"]
        ratios = [r["tasks"][dataset]["pairs_per_s"] / base for r in results]
        ax.bar(np.arange(len(names)) + j * width, ratios, width, label=dataset)
    ax.axhline(6, color="grey", linestyle="--", linewidth=1, label="target 6x (service)")
    ax.set_xticks(np.arange(len(names)) + width * (len(datasets) - 1) / 2, names, rotation=30, ha="right")
    ax.set_ylabel("pairs/s, x the transformers pipeline")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def auto_timing(batch_size: int, threads: int, results: list[dict]) -> dict:
    """``engine=auto``'s timing of the shipped model with no budget (speed alone), in its own child process, and
    whether its pick is the engine that won this run on real texts (``ort-sparse-int8`` against ``ds-sparse-int8``,
    pairs/s per dataset)."""
    from service.engines import Budget, selection, timing_shapes
    from service.sources import DEFAULT_MODEL, default_cache_dir, resolve_model

    source = resolve_model(DEFAULT_MODEL)
    max_length = min(512, source.config().get("max_position_embeddings", 512))
    options = dict(cache_dir=default_cache_dir(), batch_size=batch_size, max_length=max_length, num_threads=threads,
                   task="sequence-classification", quantization="auto", compile="lazy", ort_arena="on")
    shapes = timing_shapes(batch_size, max_length)
    measured = selection.measure_in_child(source, options, selection.CANDIDATES, shapes=shapes, budget=Budget())
    pick, why, _ = selection.choose(measured, Budget())
    by_config = {r["config"]: r["tasks"] for r in results}
    winners = {}
    if {"ort-sparse-int8", "ds-sparse-int8"} <= set(by_config):
        for dataset in by_config["ort-sparse-int8"]:
            ort, ds = (by_config[c][dataset]["pairs_per_s"] for c in ("ort-sparse-int8", "ds-sparse-int8"))
            winners[dataset] = "onnxruntime" if ort >= ds else "deepsparse"
    agrees = bool(winners) and all(w == pick for w in winners.values())
    line = (f"auto's timing with no budget (shapes {list(shapes)}): rows/s {measured['rows_per_s']}, picks {pick}; "
            f"this run's winner on real texts: {winners or 'not run'}: "
            f"{'agrees' if agrees else 'DISAGREES' if winners else 'not checked'}")
    return {"rows_per_s": measured["rows_per_s"], "costs": measured["costs"], "pick": pick, "why": why,
            "winners_on_real_texts": winners, "agrees": agrees, "line": line}


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="The shared data folder (holds classification/).")] = Path("../shared/data"),
    output_dir: Annotated[Path, typer.Option(help="Where sparse_speed.{json,md,png} go.")] = Path("runs/sparse_speed"),
    configs: Annotated[Optional[list[str]], typer.Option("--config", help="Only these configurations (repeatable).")] = None,
    ag_news: Annotated[int, typer.Option(help="AG News test texts.")] = 2000,
    emotion: Annotated[Optional[int], typer.Option(help="Emotion test texts (default: all 2,000).")] = None,
    threads: Annotated[int, typer.Option(help="Threads / cores for every engine.")] = 2,
    request_texts: Annotated[int, typer.Option(help="Texts per request.")] = 8,
    clients: Annotated[int, typer.Option(help="Concurrent HTTP clients of the service.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Pairs per forward pass (this project's engines and the service).")] = 32,
    check_auto: Annotated[bool, typer.Option("--check-auto", help="Also run auto's timing (no budget) and set its "
                                             "pick against this run's winner on real texts.")] = False,
    baseline_src: Annotated[Optional[Path], typer.Option(help="A checkout of older code (its service/ package) for "
                                                        "the service-http-baseline configuration, e.g. `git archive "
                                                        "<commit> service | tar -x -C runs/baseline_src`.")] = None,
    run_config: Annotated[Optional[str], typer.Option(hidden=True)] = None,
    result_file: Annotated[Optional[Path], typer.Option(hidden=True)] = None,
    models_json: Annotated[Optional[str], typer.Option(hidden=True)] = None,
) -> None:
    """Run every configuration in its own process and write the table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    tasks = load_tasks(data_dir, ag_news, emotion)
    if run_config is not None:  # child process
        models = json.loads(models_json)
        if run_config in ("service-http", "service-http-baseline"):
            result = run_service(tasks, models, threads, request_texts, clients, batch_size,
                                 baseline_src if run_config == "service-http-baseline" else None)
        else:
            result = run_one(run_config, tasks, models, threads, request_texts, batch_size)
        result_file.write_text(json.dumps(result))
        return
    chosen = configs or list(CONFIGS)
    unknown = [c for c in chosen if c not in CONFIGS]
    if unknown:
        typer.echo(f"error: unknown configuration {unknown[0]!r}; choose from {', '.join(CONFIGS)}", err=True)
        raise typer.Exit(2)
    if "service-http-baseline" in chosen and not (baseline_src and (Path(baseline_src) / "service").is_dir()):
        typer.echo("error: service-http-baseline needs --baseline-src, a folder holding an older service/ package",
                   err=True)
        raise typer.Exit(2)
    if not (data_dir / "classification").is_dir():
        typer.echo(f"error: --data-dir {data_dir} has no classification/ folder", err=True)
        raise typer.Exit(2)
    from service.sources import default_cache_dir

    output_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sparse_speed-"))  # the DeepSparse pipeline's model copy; not kept
    models = prepare_models(work, default_cache_dir())
    common = ["--data-dir", str(data_dir), "--ag-news", str(ag_news), "--threads", str(threads),
              "--request-texts", str(request_texts), "--clients", str(clients), "--batch-size", str(batch_size),
              "--models-json", json.dumps(models)] + (["--emotion", str(emotion)] if emotion else []) + \
        (["--baseline-src", str(Path(baseline_src).resolve())] if baseline_src else [])
    results = []
    try:
        for config in chosen:
            logger.info("configuration %s: %s", config, DESCRIPTIONS[config])
            result, child_rss = _spawn(["--run-config", config, *common])
            if not config.startswith("service-http"):
                result["peak_rss_mb"] = child_rss
            results.append(result)
            logger.info("%s: %s", config, {d: t["pairs_per_s"] for d, t in result["tasks"].items()})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if check_auto:
        meta_auto = auto_timing(batch_size, threads, results)
    meta = {**cpu_facts(), "threads": threads, "request_texts": request_texts, "clients": clients,
            "batch_size": batch_size, "ag_news_texts": ag_news, "emotion_texts": emotion or "all",
            "command": "python benchmarks/sparse_speed.py " + " ".join(sys.argv[1:])}
    if check_auto:
        meta["auto_check"] = meta_auto
    table = render(results, meta)
    if check_auto:
        table += "\n\n" + meta_auto["line"]
    (output_dir / "sparse_speed.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    (output_dir / "sparse_speed.md").write_text(table + "\n")
    plot(results, output_dir / "sparse_speed.png")
    typer.echo(table)


if __name__ == "__main__":
    app()
