"""Load test: concurrent clients against ``python -m service`` on loopback, for a bounded time.

Starts the service in its own process (:class:`benchmarks.service_process.ServiceProcess`, both default models),
then ``--clients`` concurrent httpx clients send requests for ``--seconds`` seconds, each drawing from a mix of
methods and sizes (embedding / nli / ensemble / auto, 1 to 16 texts, 3 to 8 labels, single- and multi-label, a
long text with ``long_text=chunks``). Every text carries a unique tag, and every answer is checked against its
request: one result per text, in order, the same text back, exactly the labels asked, scores sorted and in [0, 1]
(no lost or reordered result). Reports requests/s, latency p50/p95/p99, answers by status, the server's peak RSS
and its RSS sampled every second, the load average (the machine may be shared) and the CPU.

Not run by CI (60 s of load and a start-up). Targets (issue 12): no 5xx other than 503 backpressure, no mismatched
result, memory flat over the run (issue 23: the mean RSS of the last 15 s within 10% of the first 15 s's). The
service runs with its default settings (``engine=auto``, ``ZSC_ORT_ARENA=shrink``) unless ``--engine`` /
``--setting`` say otherwise.

    .venv/bin/python benchmarks/load.py --data-dir ../shared/data --output-dir runs/load
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_facts  # noqa: E402
from benchmarks.service_process import ServiceProcess  # noqa: E402

logger = logging.getLogger("benchmarks.load")
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])

LABEL_POOL = ["World", "Sports", "Business", "Sci/Tech", "politics", "health", "entertainment", "weather"]
#: (name, weight, method, texts, labels, multi_label, long_text)
MIX = [
    ("embedding 1x4", 4, "embedding", 1, 4, False, "truncate"),
    ("embedding 16x8", 2, "embedding", 16, 8, False, "truncate"),
    ("auto 4x4", 3, None, 4, 4, False, "truncate"),
    ("nli 2x4 multi-label", 2, "nli", 2, 4, True, "truncate"),
    ("nli 4x3", 1, "nli", 4, 3, False, "truncate"),
    ("ensemble 2x4", 1, "ensemble", 2, 4, False, "truncate"),
    ("embedding long text chunks", 1, "embedding", 1, 4, False, "chunks"),
]


def read_texts(data_dir: Path) -> list[str]:
    """AG News test texts (title + description), or generated sentences when the data folder is absent."""
    path = data_dir / "classification" / "ag_news" / "test.jsonl"
    if not path.is_file():
        logger.warning("%s not found: sending generated sentences", path)
        return [f"Report {i}: the committee met on Monday to discuss the budget and the match." for i in range(500)]
    with path.open(encoding="utf-8") as handle:
        return [" ".join((row["title"].strip(), row["description"].strip())) for row in map(json.loads, handle)]


def check(body: dict, texts: list[str], labels: list[str]) -> str | None:
    """Why an answer does not match its request, or ``None``."""
    results = body.get("results", [])
    if len(results) != len(texts):
        return f"{len(results)} results for {len(texts)} texts"
    for i, (result, text) in enumerate(zip(results, texts)):
        if result["text"] != text:
            return f"results[{i}] is another text's"
        if sorted(result["labels"]) != sorted(labels):
            return f"results[{i}] has labels {result['labels']}"
        scores = result["scores"]
        if scores != sorted(scores, reverse=True) or not all(0 <= s <= 1 for s in scores):
            return f"results[{i}] scores unsorted or out of [0, 1]"
    return None


class RssSampler(threading.Thread):
    """The process's resident memory (MB) every ``interval_s`` seconds, from /proc/<pid>/status."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.samples, self._halt = pid, interval_s, [], threading.Event()
        self.began = time.perf_counter()

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            rss = self.rss_mb()
            if rss is not None:
                self.samples.append((round(time.perf_counter() - self.began, 1), round(rss, 1)))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


async def client(number: int, url: str, texts: list[str], long_texts: list[str], deadline: float,
                 records: list[dict], headers: dict[str, str]) -> None:
    import httpx

    rng = random.Random(number)
    weights = [m[1] for m in MIX]
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as http:
        sent = 0
        while time.perf_counter() < deadline:
            name, _, method, n_texts, n_labels, multi, long_text = rng.choices(MIX, weights)[0]
            pool = long_texts if long_text == "chunks" else texts
            batch = [f"#{number}-{sent}-{i} {rng.choice(pool)}" for i in range(n_texts)]
            labels = rng.sample(LABEL_POOL, n_labels)
            body = {"texts": batch, "labels": labels, "multi_label": multi, "long_text": long_text}
            if method:
                body["method"] = method
            sent += 1
            started = time.perf_counter()
            record = {"kind": name, "texts": n_texts}
            try:
                response = await http.post("/zero-shot", json=body)
                record["status"] = response.status_code
                if response.status_code == 200:
                    record["mismatch"] = check(response.json(), batch, labels)
            except httpx.HTTPError as exc:
                record["status"] = type(exc).__name__
            record["seconds"] = time.perf_counter() - started
            record["ended"] = time.perf_counter()
            records.append(record)
            if record["status"] == 503:
                await asyncio.sleep(1)  # the service's Retry-After


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 1) if values else None


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="The shared data folder (AG News test texts).")] = Path("../shared/data"),
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 16,
    seconds: Annotated[float, typer.Option(help="Duration of the load, s.")] = 60.0,
    settle_seconds: Annotated[float, typer.Option(help="RSS is also compared from this many seconds into the load "
                                                  "(once the clients' first answers are back), as well as from its "
                                                  "start.")] = 15.0,
    engine: Annotated[str, typer.Option(help="ZSC_ENGINE of the service.")] = "auto",
    setting: Annotated[Optional[list[str]], typer.Option(help="Extra ZSC_NAME=value for the service "
                                                         "(repeatable).")] = None,
    output_dir: Annotated[Path, typer.Option(help="Where load.json and load.md go.")] = Path("runs/load"),
) -> None:
    """Run the load and write load.json (every request, the RSS series) and load.md (the summary)."""
    import httpx

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    texts = read_texts(data_dir)
    rng = random.Random(0)
    long_texts = [" ".join(rng.sample(texts, 40)) for _ in range(20)]  # ~2,000 tokens: several windows each
    settings = {"ZSC_ENGINE": engine, **dict(s.split("=", 1) for s in setting or [])}
    headers = {"Authorization": f"Bearer {settings['ZSC_API_KEY']}"} if "ZSC_API_KEY" in settings else {}
    facts = {**cpu_facts(), "command": "python benchmarks/load.py " + " ".join(sys.argv[1:]), "clients": clients, "seconds": seconds, "settings": settings,
             "load_average_before": os.getloadavg()}
    records: list[dict] = []
    with ServiceProcess(settings) as service:
        facts["ready_s"] = round(service.ready_s, 1)
        info = httpx.get(service.url + "/info", headers=headers, timeout=30).json()
        facts["engines"] = {role: {k: m.get(k) for k in ("engine", "engine_why", "engine_licence", "arena")}
                            for role, m in info["models"].items()}
        sampler = RssSampler(service.pid)
        facts["rss_ready_mb"] = sampler.rss_mb()
        for kind in MIX:  # warm-up: one request of each kind, not counted
            body = {"texts": [texts[0]] * kind[3], "labels": LABEL_POOL[:kind[4]], "long_text": kind[6],
                    **({"method": kind[2]} if kind[2] else {})}
            httpx.post(service.url + "/zero-shot", json=body, headers=headers, timeout=120).raise_for_status()
        facts["rss_after_warmup_mb"] = sampler.rss_mb()
        sampler.start()
        began = time.perf_counter()
        deadline = began + seconds

        async def run_all() -> None:
            await asyncio.gather(*(client(c, service.url, texts, long_texts, deadline, records, headers)
                                   for c in range(clients)))

        asyncio.run(run_all())
        wall = time.perf_counter() - began
        sampler.stop()
        facts["metrics_requests"] = [line for line in httpx.get(service.url + "/metrics", headers=headers).text
                                     .splitlines() if line.startswith("zsc_requests_total")]
    facts["peak_rss_mb"] = round(service.peak_rss_mb, 1)
    facts["load_average_after"] = os.getloadavg()
    ok = [r for r in records if r["status"] == 200]
    latencies = np.array([r["seconds"] for r in ok]) * 1000
    statuses = Counter(str(r["status"]) for r in records)
    mismatches = [r for r in ok if r.get("mismatch")]
    rss = sampler.samples
    third = max(1, len(rss) // 3)
    summary = {
        "requests": len(records), "wall_s": round(wall, 1), "requests_per_s": round(len(ok) / wall, 2),
        "texts_per_s": round(sum(r["texts"] for r in ok) / wall, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1) if len(ok) else None,
        "p95_ms": round(float(np.percentile(latencies, 95)), 1) if len(ok) else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if len(ok) else None,
        "statuses": dict(statuses), "mismatched_results": len(mismatches),
        "server_errors_other_than_503": sum(n for s, n in statuses.items() if s.startswith("5") and s != "503"),
        "transport_errors": sum(n for s, n in statuses.items() if not s.isdigit()),
        "rss_first_third_mean_mb": round(float(np.mean([m for _, m in rss[:third]])), 1) if rss else None,
        "rss_last_third_mean_mb": round(float(np.mean([m for _, m in rss[-third:]])), 1) if rss else None,
        "rss_max_sampled_mb": max((m for _, m in rss), default=None),
        "rss_first_15s_mean_mb": _mean([m for t, m in rss if t <= 15]),
        "rss_15s_after_settle_mean_mb": _mean([m for t, m in rss if settle_seconds < t <= settle_seconds + 15]),
        "rss_last_15s_mean_mb": _mean([m for t, m in rss if t > wall - 15]),
        "by_kind": {name: {"n": sum(1 for r in ok if r["kind"] == name),
                           "p50_ms": round(float(np.percentile([r["seconds"] * 1000 for r in ok if r["kind"] == name],
                                                               50)), 1)}
                    for name, *_ in MIX if any(r["kind"] == name for r in ok)},
    }
    first, last = summary["rss_first_15s_mean_mb"], summary["rss_last_15s_mean_mb"]
    summary["rss_last_over_first_15s"] = round(last / first, 3) if first and last else None
    summary["rss_flat_within_10pct"] = bool(first and last and abs(last / first - 1) <= 0.10)
    settled = summary["rss_15s_after_settle_mean_mb"]
    summary["rss_last_over_settled_15s"] = round(last / settled, 3) if settled and last else None
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "load.json").write_text(json.dumps({"facts": facts, "summary": summary, "rss": rss,
                                                      "mismatches": mismatches[:20]}, indent=2))
    lines = [
        f"CPU: {facts['cpu']} ({facts['cores']} cores, flags: {facts['flags']}); load average before "
        f"{', '.join(f'{x:.2f}' for x in facts['load_average_before'])}, after "
        f"{', '.join(f'{x:.2f}' for x in facts['load_average_after'])}; service settings {settings}; ready in "
        f"{facts['ready_s']} s", "",
        "engines: " + "; ".join(f"{role}: {m['engine']} (arena {m['arena']}; {m['engine_why']})"
                                for role, m in facts["engines"].items()), "",
        f"{clients} clients for {summary['wall_s']} s: {summary['requests']} requests, {summary['requests_per_s']} "
        f"answered/s ({summary['texts_per_s']} texts/s); latency p50 {summary['p50_ms']} ms, p95 {summary['p95_ms']} ms, "
        f"p99 {summary['p99_ms']} ms",
        f"answers by status: {summary['statuses']}; 5xx other than 503: {summary['server_errors_other_than_503']}; "
        f"results not matching their request: {summary['mismatched_results']}",
        f"server RSS: {facts['rss_ready_mb']:.0f} MB at ready, {facts['rss_after_warmup_mb']:.0f} MB after warm-up, "
        f"mean {summary['rss_first_third_mean_mb']} MB over the first third of the run and "
        f"{summary['rss_last_third_mean_mb']} MB over the last, {summary['rss_max_sampled_mb']} MB max sampled, "
        f"peak (ru_maxrss) {facts['peak_rss_mb']} MB",
        f"first 15 s mean {first} MB, last 15 s mean {last} MB: x{summary['rss_last_over_first_15s']} "
        f"({'flat, within 10%' if summary['rss_flat_within_10pct'] else 'NOT within 10%'}); "
        f"{settle_seconds:.0f}-{settle_seconds + 15:.0f} s mean {settled} MB: last 15 s x"
        f"{summary['rss_last_over_settled_15s']}",
        "RSS every 5 s (s: MB): " + ", ".join(f"{t:.0f}: {m:.0f}" for t, m in rss[::5]), "",
        "| kind | answered | p50 ms |", "|---|---|---|",
        *[f"| {name} | {v['n']} | {v['p50_ms']} |" for name, v in summary["by_kind"].items()],
    ]
    (output_dir / "load.md").write_text("\n".join(lines) + "\n")
    typer.echo("\n".join(lines))
    if summary["server_errors_other_than_503"] or summary["mismatched_results"] or summary["transport_errors"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
