"""Argilla's own ceiling on the local stack: records/s of bulk upserts of push's records, over batch sizes and
concurrency levels, side by side with today's push path.

Each record is what ``push`` writes: a text, a suggestion (value, score, agent), the float metadata (confidence,
margin, entropy, one teacher score per label) and a 384-d vector (``annotate.dataset.build_records``), for the
AG News pool texts; scores and vectors are seeded random numbers (the server's cost does not depend on them).
Every (mode, batch size, concurrency) cell writes new records into a fresh dataset (creates, as a first push does):

* ``raw``: pre-serialised request bodies ``PUT /api/v1/datasets/{id}/records/bulk`` on ``concurrency`` threads
  (httpx): the server's ceiling, with almost no client work;
* ``upserter``: :class:`annotate.upsert.Upserter` (SDK record models built in the client, bounded concurrency):
  what push can reach;
* ``sdk-log`` (batch 64, concurrency 1 only): ``dataset.records.log``, one request at a time: today's push.

Usage::

    python -m benchmarks.argilla_ceiling --records 1000 --output benchmarks/results/argilla_ceiling.json
    # against a running stack: --api-url/--api-key or ARGILLA_API_URL/ARGILLA_API_KEY (else a stack is started)

Prints CPU model and flags, the load average next to every cell, the curve and the best cell. Other agents may
share the cores: compare cells of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.machine import cpu_facts

REPO = Path(__file__).resolve().parents[1]
LABELS = ["World", "Sports", "Business", "Sci/Tech"]
DIM = 384
POOL = Path("classification") / "ag_news" / "train_unlabeled_8k_description_only.jsonl"


def texts_from(data_dir: Path, count: int) -> list[str]:
    texts = []
    with (data_dir / POOL).open(encoding="utf-8") as handle:
        for line in handle:
            text = json.loads(line)["text"].strip()
            if text:
                texts.append(text)
    while len(texts) < count:  # more records than the pool: suffix copies (new ids)
        texts += [f"{t} ({len(texts)})" for t in texts[:count - len(texts)]]
    return texts[:count]


def make_records(texts: list[str], seed: int, tag: str):
    from annotate.dataset import build_records, record_id

    rng = np.random.default_rng(seed)
    scores = rng.dirichlet(np.ones(len(LABELS)), size=len(texts))
    vectors = rng.normal(size=(len(texts), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [record_id(t, tag) for t in texts]
    return build_records(ids, texts, scores, LABELS, False, "packaged:all-MiniLM-L6-v2:onnxruntime:embedding",
                         vectors=vectors)


def new_dataset(client, workspace: str, name: str):
    import argilla as rg

    from annotate.dataset import build_settings

    dataset = rg.Dataset(name=name, workspace=workspace, client=client,
                         settings=build_settings(LABELS, False, "ceiling benchmark", vector_dim=DIM))
    dataset.create()
    return dataset


def run_raw(client, dataset, records, batch_size: int, concurrency: int) -> float:
    """Seconds to PUT every record in pre-serialised bulk bodies on ``concurrency`` threads."""
    import httpx

    for record in records:
        record.dataset = dataset
    bodies = [json.dumps({"items": [r.api_model().model_dump(mode="json") for r in records[i:i + batch_size]]})
              .encode() for i in range(0, len(records), batch_size)]
    url = f"{client.api_url.rstrip('/')}/api/v1/datasets/{dataset.id}/records/bulk"
    headers = {"X-Argilla-Api-Key": client.api_key, "Content-Type": "application/json"}
    local = threading.local()

    retries = []

    def put(body: bytes) -> None:
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=300)
        for attempt in range(6):  # 5xx (SQLite "database is locked" under concurrent writes) is retried, as push does
            response = local.http.put(url, content=body, headers=headers)
            if response.status_code == 200:
                return
            if response.status_code < 500 or attempt == 5:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            retries.append(response.text[:200])
            time.sleep(0.5 * 2 ** attempt)

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(put, bodies))
    run_raw.retries = len(retries)
    return time.perf_counter() - began


def run_upserter(dataset, records, batch_size: int, concurrency: int) -> float:
    from annotate.upsert import Upserter

    began = time.perf_counter()
    with Upserter(dataset, batch_size=batch_size, concurrency=concurrency) as upserter:
        for i in range(0, len(records), 64):  # push hands over 64 scored records at a time
            upserter.submit(records[i:i + 64])
    assert upserter.stats.written == len(records)
    return time.perf_counter() - began


def run_sdk_log(dataset, records, batch_size: int) -> float:
    began = time.perf_counter()
    for i in range(0, len(records), batch_size):
        with contextlib.redirect_stderr(io.StringIO()):
            dataset.records.log(records[i:i + batch_size], batch_size=batch_size)
    return time.perf_counter() - began


def count(dataset) -> int:
    return sum(1 for _ in dataset.records(batch_size=1000, with_suggestions=False, with_responses=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000, help="records per cell")
    parser.add_argument("--batch-sizes", default="64,256,500")
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--modes", default="raw,upserter")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ZSC_SHARED_DATA",
                                                                              REPO.parent / "shared" / "data")))
    parser.add_argument("--api-url", default=os.environ.get("ARGILLA_API_URL"))
    parser.add_argument("--api-key", default=os.environ.get("ARGILLA_API_KEY"))
    parser.add_argument("--workspace", default=os.environ.get("ARGILLA_WORKSPACE", "argilla"))
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "argilla_ceiling.json")
    parser.add_argument("--figure", type=Path, default=None, help="PNG of the curve (default: next to --output)")
    args = parser.parse_args(argv)
    import argilla as rg

    if not (args.data_dir / POOL).is_file():
        print(f"error: {args.data_dir / POOL} not found (set --data-dir or ZSC_SHARED_DATA)", file=sys.stderr)
        return 2
    stack = None
    if not args.api_url:
        sys.path.insert(0, str(REPO))
        from tests.argilla_stack import ArgillaStack

        stack = ArgillaStack.start(REPO / "runs" / "argilla_ceiling_stack")
        args.api_url, args.api_key, args.workspace = stack.url, stack.api_key, stack.workspace
    cpu = cpu_facts()
    print(f"CPU {cpu['cpu']} ({cpu['cores']} cores) flags {cpu['flags']}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; Argilla at {args.api_url}"
          f"{' (local stack: argilla-server 2.8.0, osmem, Redis, SQLite)' if stack else ''}")
    cells = []
    try:
        client = rg.Argilla(api_url=args.api_url, api_key=args.api_key, timeout=300)
        texts = texts_from(args.data_dir, args.records)
        plan = [("sdk-log", 64, 1)] + [(mode, b, c) for mode in args.modes.split(",")
                                       for b in map(int, args.batch_sizes.split(","))
                                       for c in map(int, args.concurrency.split(","))]
        stamp = time.strftime("%H%M%S")
        for n, (mode, batch, conc) in enumerate(plan):
            records = make_records(texts, n, f"{stamp}-{n}")
            dataset = new_dataset(client, args.workspace, f"ceiling-{stamp}-{n}-{mode}-b{batch}-c{conc}")
            load_before = os.getloadavg()[0]
            run_raw.retries, error = 0, None
            try:
                if mode == "raw":
                    seconds = run_raw(client, dataset, records, batch, conc)
                elif mode == "upserter":
                    seconds = run_upserter(dataset, records, batch, conc)
                else:
                    seconds = run_sdk_log(dataset, records, batch)
            except Exception as exc:  # noqa: BLE001 - a failed cell is a result too
                seconds, error = float("nan"), " ".join(str(exc).split())[:300]
            stored = count(dataset)
            cell = {"mode": mode, "batch_size": batch, "concurrency": conc, "records": len(records),
                    "stored": stored, "seconds": round(seconds, 3),
                    "records_per_s": round(len(records) / seconds, 1) if error is None else 0.0,
                    "retries_5xx": run_raw.retries, "error": error,
                    "load_1m_before": round(load_before, 2), "load_1m_after": round(os.getloadavg()[0], 2)}
            cells.append(cell)
            print(f"{mode:9s} batch {batch:4d} concurrency {conc}: {cell['records_per_s']:7.1f} records/s "
                  f"({len(records)} in {seconds:6.1f} s; stored {stored}; 5xx retried {run_raw.retries}; load "
                  f"{load_before:.2f} -> {cell['load_1m_after']:.2f}){' FAILED: ' + error if error else ''}",
                  flush=True)
            with contextlib.suppress(Exception):
                dataset.delete()
    finally:
        if stack is not None:
            stack.stop()
    best = {mode: max((c for c in cells if c["mode"] == mode), key=lambda c: c["records_per_s"])
            for mode in {c["mode"] for c in cells}}
    for mode, cell in sorted(best.items()):
        print(f"best {mode:9s}: {cell['records_per_s']:.1f} records/s at batch {cell['batch_size']}, "
              f"concurrency {cell['concurrency']}")
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu, "api_url": args.api_url,
              "local_stack": stack is not None, "cells": cells, "best": best}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    figure = args.figure or args.output.with_suffix(".png")
    plot(cells, figure, cpu)
    print(f"results: {args.output}; figure: {figure}")
    return 0


def plot(cells: list[dict], path: Path, cpu: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, mode in zip(axes, ("raw", "upserter")):
        for batch in sorted({c["batch_size"] for c in cells if c["mode"] == mode}):
            row = sorted((c for c in cells if c["mode"] == mode and c["batch_size"] == batch),
                         key=lambda c: c["concurrency"])
            ax.plot([c["concurrency"] for c in row], [c["records_per_s"] for c in row], marker="o",
                    label=f"batch {batch}")
        for c in cells:
            if c["mode"] == "sdk-log":
                ax.axhline(c["records_per_s"], color="grey", linestyle="--", label="push today (log, 64, 1)")
        ax.set_title(f"{mode}: bulk upserts (suggestion, metadata, 384-d vector)")
        ax.set_xlabel("requests in flight")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("records/s")
    fig.suptitle(f"Argilla 2.8 local stack on {cpu['cpu']} ({cpu['cores']} cores, shared)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
