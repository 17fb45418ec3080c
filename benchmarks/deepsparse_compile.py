"""When should DeepSparse compile its (batch, seq) buckets? Lazy, at start-up, or in the background - measured.

For each policy (``ZSC_DEEPSPARSE_COMPILE``), starts ``python -m service`` on the shipped NLI teacher with
``ZSC_ENGINE=deepsparse``, then measures: seconds until ``GET /ready`` is 200, the latency of the first 40
requests of real AG News and emotion texts (requests of 1 to 16 texts, so several buckets are needed), and the
server's peak RSS. Run on a quiet machine::

    python benchmarks/deepsparse_compile.py --data-dir ../shared/data --output benchmarks/results/deepsparse_compile.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])
POLICIES = ("lazy", "startup", "background")


def requests_of(data_dir: Path, n: int = 40, seed: int = 0) -> list[dict]:
    from train.evaluate import AG_NEWS_LABELS, EMOTION_LABELS, read_labelled

    ag, _ = read_labelled(data_dir / "classification/ag_news/test.jsonl", ("title", "description"), 400)
    emotion, _ = read_labelled(data_dir / "classification/emotion/test.jsonl", ("text",), 400)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        texts, labels = (ag, AG_NEWS_LABELS) if i % 2 == 0 else (emotion, EMOTION_LABELS)
        size = int(rng.choice([1, 2, 4, 8, 16]))
        start = int(rng.integers(0, len(texts) - size))
        out.append({"texts": texts[start:start + size], "labels": list(labels), "method": "nli"})
    return out


def measure(policy: str, requests: list[dict], threads: int) -> dict:
    import httpx

    from benchmarks.service_process import ServiceProcess

    settings = {"ZSC_MODEL": "default", "ZSC_EMBEDDING_MODEL": "none", "ZSC_METHOD": "nli", "ZSC_ENGINE": "deepsparse",
                "ZSC_DEEPSPARSE_COMPILE": policy, "ZSC_NUM_THREADS": str(threads)}
    with ServiceProcess(settings) as service:
        latencies = []
        for body in requests:
            t0 = time.perf_counter()
            httpx.post(service.url + "/zero-shot", json=body, timeout=600).raise_for_status()
            latencies.append(time.perf_counter() - t0)
        info = httpx.get(service.url + "/info", timeout=10).json()["models"]["nli"]
    return {"policy": policy, "ready_s": round(service.ready_s, 1), "first_request_ms": round(1000 * latencies[0], 1),
            "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 1),
            "p95_ms": round(1000 * float(np.percentile(latencies, 95)), 1),
            "max_ms": round(1000 * max(latencies), 1), "total_s": round(sum(latencies), 2),
            "compiled_buckets": len(info.get("compiled_buckets", [])), "peak_rss_mb": round(service.peak_rss_mb)}


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="The shared data folder.")] = Path("../shared/data"),
    output: Annotated[Path, typer.Option(help="JSON results.")] = Path("runs/deepsparse_compile.json"),
    threads: Annotated[int, typer.Option(help="Cores for DeepSparse.")] = 2,
) -> None:
    """Measure the three compile policies one after the other and print a table."""
    requests = requests_of(data_dir)
    results = [measure(policy, requests, threads) for policy in POLICIES]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    typer.echo("| policy | ready after s | first request ms | p50 ms | p95 ms | max ms | 40 requests s | buckets "
               "compiled | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|")
    for r in results:
        typer.echo(f"| {r['policy']} | {r['ready_s']} | {r['first_request_ms']} | {r['p50_ms']} | {r['p95_ms']} | "
                   f"{r['max_ms']} | {r['total_s']} | {r['compiled_buckets']} | {r['peak_rss_mb']} |")


if __name__ == "__main__":
    app()
