"""Online replicas on one machine, side by side in one run: the plain service (one process, its own micro-batching,
engine threads = all cores) against the same app as Ray Serve replicas (service/ray_serve.py, N replicas of 1 CPU).

The same client load goes to each: ``--clients`` threads, each sending ``POST /zero-shot`` requests of
``--texts`` AG News texts (embedding method, the 4 AG News labels) until ``--requests`` are answered. Reported:
texts/s, median and p95 latency, the load average (other agents may share the cores), CPU model and flags.

Usage::

    python -m benchmarks.serve_replicas --replicas 2 --clients 8 --requests 64 \
        --output benchmarks/results/serve_replicas.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def load(url: str, texts: list[str], clients: int, requests: int, size: int) -> dict:
    import httpx

    bodies = [{"texts": texts[(i * size) % len(texts):(i * size) % len(texts) + size], "labels": LABELS,
               "method": "embedding"} for i in range(requests)]
    latencies = []

    def send(body: dict) -> None:
        began = time.perf_counter()
        response = httpx.post(url + "/zero-shot", json=body, timeout=300)
        response.raise_for_status()
        latencies.append(time.perf_counter() - began)

    send(bodies[0])  # warm-up (label embeddings cached, engine pages in)
    latencies.clear()
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, bodies))
    seconds = time.perf_counter() - began
    return {"texts_per_s": round(requests * size / seconds, 1), "seconds": round(seconds, 2),
            "p50_ms": round(1000 * float(np.median(latencies)), 1),
            "p95_ms": round(1000 * float(np.percentile(latencies, 95)), 1),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--texts", type=int, default=32, help="texts a request")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ZSC_SHARED_DATA",
                                                                              REPO.parent / "shared" / "data")))
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "serve_replicas.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from benchmarks.machine import cpu_facts
    from benchmarks.service_process import ServiceProcess

    pool = args.data_dir / "classification" / "ag_news" / "train_unlabeled_8k_description_only.jsonl"
    if not pool.is_file():
        print(f"error: {pool} not found (set --data-dir or ZSC_SHARED_DATA)", file=sys.stderr)
        return 2
    texts = [json.loads(line)["text"] for line in pool.open(encoding="utf-8")][:4000]
    cpu = cpu_facts()
    flags = cpu["flags"]
    print(f"CPU {cpu['cpu']} ({cpu['cores']} cores) flags {flags}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    settings = {"ZSC_MODEL": "none", "ZSC_METHOD": "embedding"}
    results = {}
    with ServiceProcess(settings) as plain:
        results["plain service (1 process, micro-batching)"] = load(plain.url, texts, args.clients, args.requests,
                                                                    args.texts)
    import ray
    from ray import serve

    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", **settings})
    from service.ray_serve import start

    ray.init(num_cpus=max(cpu["cores"], args.replicas), include_dashboard=False, object_store_memory=128 * 2**20,
             logging_level="warning")
    try:
        import httpx

        from tests.conftest import free_port

        url = start(replicas=args.replicas, num_cpus=1, port=free_port())
        # The proxy routes each /ready to one replica: the first one ready answers 200 while the others still load
        # (and answer 503 to /zero-shot), so wait for every replica: enough consecutive 200s in a row.
        in_a_row = 0
        while in_a_row < 4 * args.replicas:
            in_a_row = in_a_row + 1 if httpx.get(url + "/ready", timeout=60).status_code == 200 else 0
            time.sleep(0.1 if in_a_row else 1)
        results[f"Ray Serve, {args.replicas} replicas x 1 CPU"] = load(url, texts, args.clients, args.requests,
                                                                      args.texts)
    finally:
        serve.shutdown()
        ray.shutdown()
    for name, r in results.items():
        print(f"{name:45s} {r['texts_per_s']:7.1f} texts/s  p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  "
              f"load {r['load_before']:.2f} -> {r['load_after']:.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": {**cpu, "flags": flags},
                                       "clients": args.clients, "requests": args.requests,
                                       "texts_per_request": args.texts, "results": results}, indent=2) + "\n")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
