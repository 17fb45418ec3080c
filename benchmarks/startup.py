"""Start-up and memory of ``python -m service`` with the default settings (both models, ``engine=auto``).

Starts, each in its own process, in one run and in this order:

1. ``cold``: a fresh, empty ``ZSC_CACHE_DIR`` (ONNX exports, int8 graphs and ``auto``'s measurement all built);
2. ``warm``: the same cache again (``auto`` reuses its measurement and builds one engine per model);
3. ``remeasure``: the same cache with ``ZSC_REMEASURE=true`` (graphs cached, the engines timed again: what every
   start cost before the measurement was remembered, minus the memory the timing child gives back);
4. with ``--baseline-src DIR`` (a checkout of the code before this change, e.g. ``git archive <rev> service | tar
   -x -C DIR``), ``baseline-cold`` and ``baseline-warm``: that code's ``python -m service`` on its own fresh cache,
   side by side with the above.

For each start: seconds from process start to ``GET /ready`` 200, the server's resident memory (``VmRSS``) after
ready and after ``--requests`` small ``POST /zero-shot`` requests (one text; single-label and multi-label in turn,
so both the embedding and the NLI model serve), its own peak (``VmHWM``), the peak including the processes it
waited for (``ru_maxrss`` of ``wait4``: ``auto``'s timing child), each model's engine and ``auto_selection`` from
``GET /info``, and the load average (other processes share the cores). CPU model and flags are printed with the
figures. Results: ``startup.json`` and ``startup.md`` in ``--output-dir``. Not run by CI (minutes)::

    python benchmarks/startup.py --output-dir benchmarks/results/startup
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_facts  # noqa: E402
from benchmarks.service_process import ServiceProcess  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])

TEXTS = ("The central bank raised interest rates again to fight inflation.",
         "The striker scored twice in the last ten minutes and the home side won the cup.",
         "A new battery chemistry could double the range of electric cars, researchers said.",
         "Rebels and government forces agreed to a ceasefire after weeks of fighting.",
         "I can't believe how happy I am today, everything went right!")
LABELS = ("business", "sports", "science and technology", "world politics")


def proc_status_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` (MB) of a running process, from ``/proc/<pid>/status``."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def drive(url: str, requests: int, clients: int) -> dict:
    """``requests`` small ``POST /zero-shot`` calls from ``clients`` threads; counts by status and wall time."""
    import httpx

    statuses: dict = {}
    lock = threading.Lock()
    cursor = iter(range(requests))

    def worker(client: httpx.Client) -> None:
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            body = {"texts": [TEXTS[i % len(TEXTS)]], "labels": list(LABELS), "multi_label": bool(i % 2)}
            try:
                status: int | str = client.post("/zero-shot", json=body).status_code
            except httpx.HTTPError as exc:  # counted, not fatal: the memory figures still mean something
                status = type(exc).__name__
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

    began = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120) as client:
        threads = [threading.Thread(target=worker, args=(client,)) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall = time.perf_counter() - began
    return {"requests": requests, "clients": clients, "seconds": round(wall, 2),
            "requests_per_s": round(requests / wall, 1), "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)}}


def one_start(name: str, cache_dir: Path, *, requests: int, clients: int, extra: dict[str, str],
              cwd: Path = REPO) -> dict:
    """Start the service once (default settings + ``extra``), measure, stop."""
    import httpx

    settings = {"ZSC_CACHE_DIR": str(cache_dir), **extra}
    typer.echo(f"[{name}] starting ({', '.join(f'{k}={v}' for k, v in settings.items())})", err=True)
    load_before = os.getloadavg()
    with ServiceProcess(settings, ready_timeout_s=1200, cwd=cwd) as service:
        after_ready = proc_status_mb(service.pid)
        info = httpx.get(service.url + "/info", timeout=30).json()
        models = {role: {"engine": m.get("engine"), "int8": m.get("int8"), "why": m.get("engine_why"),
                         "licence": m.get("engine_licence"), "arena": m.get("arena"),
                         "auto_selection": m.get("auto_selection"), "load_seconds": m.get("load_seconds")}
                  for role, m in info["models"].items()}
        load_ready = os.getloadavg()
        traffic = drive(service.url, requests, clients)
        after_requests = proc_status_mb(service.pid)
    result = {"start": name, "ready_s": round(service.ready_s, 1), "rss_after_ready_mb": after_ready["VmRSS"],
              "rss_after_requests_mb": after_requests["VmRSS"], "server_peak_rss_mb": after_requests["VmHWM"],
              "peak_rss_with_children_mb": round(service.peak_rss_mb, 1), "traffic": traffic, "models": models,
              "load_average": {"before_start": [round(x, 2) for x in load_before],
                               "at_ready": [round(x, 2) for x in load_ready],
                               "after_requests": [round(x, 2) for x in os.getloadavg()]}}
    typer.echo(f"[{name}] ready in {result['ready_s']} s; RSS {result['rss_after_ready_mb']} MB after ready, "
               f"{result['rss_after_requests_mb']} MB after {requests} requests; engines "
               f"{ {r: m['engine'] for r, m in models.items()} }", err=True)
    return result


def render(results: list[dict], meta: dict) -> str:
    """The Markdown table of :func:`main`'s results."""
    lines = [f"CPU: {meta['cpu']} ({meta['cores']} cores; flags: {meta['flags']}); {meta['date']}; "
             f"settings: defaults (both models, engine=auto), {meta['requests']} requests of one text from "
             f"{meta['clients']} clients.", "",
             "| start | ready s | RSS after ready MB | RSS after requests MB | server peak MB | peak with timing child MB "
             "| engines (nli / embedding) | auto | measure s | load avg at ready | request statuses |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        models = r["models"]
        engines = " / ".join(str(models.get(role, {}).get("engine")) for role in ("nli", "embedding"))
        selections = [models.get(role, {}).get("auto_selection") or {} for role in ("nli", "embedding")]
        auto = " / ".join(str(s.get("measurement", "-")) for s in selections)
        measure = " / ".join(str(s.get("measure_seconds", "-")) for s in selections)
        lines.append(f"| {r['start']} | {r['ready_s']} | {r['rss_after_ready_mb']:.0f} | {r['rss_after_requests_mb']:.0f} "
                     f"| {r['server_peak_rss_mb']:.0f} | {r['peak_rss_with_children_mb']:.0f} | {engines} | {auto} "
                     f"| {measure} | {r['load_average']['at_ready'][0]} | {r['traffic']['statuses']} |")
    lines += ["", "Why each engine serves (`/info` `engine_why`), its licence, and what `auto` measured (projected "
              "costs, rows/s when timed):", ""]
    for r in results:
        for role, m in r["models"].items():
            sel = m.get("auto_selection") or {}
            costs = {k: {"start_s": c.get("projected_start_s"), "rss_mb": c.get("projected_rss_mb")}
                     for k, c in (sel.get("costs") or {}).items()}
            lines.append(f"- {r['start']}, {role}: {m.get('engine')} ({m.get('licence')}): {m.get('why')}; costs "
                         f"{costs}; rows/s {sel.get('rows_per_s')}; budget {sel.get('budget')}")
    return "\n".join(lines)


@app.command()
def main(
    output_dir: Annotated[Path, typer.Option(help="Where startup.json and startup.md go.")] = Path("runs/startup"),
    requests: Annotated[int, typer.Option(help="Small /zero-shot requests after ready.")] = 1000,
    clients: Annotated[int, typer.Option(help="Concurrent clients sending them.")] = 1,
    baseline_src: Annotated[Optional[Path], typer.Option(help="A checkout of the code before this change to start "
                                                         "side by side (its service/ package).")] = None,
    skip_remeasure: Annotated[bool, typer.Option("--skip-remeasure", help="Leave out the remeasure start.")] = False,
    service_log_level: Annotated[str, typer.Option(help="The services' ZSC_LOG_LEVEL.")] = "warning",
) -> None:
    """Measure cold, warm and remeasure starts (and optionally the baseline's) and write the tables."""
    if baseline_src is not None and not (baseline_src / "service" / "__main__.py").is_file():
        typer.echo(f"error: --baseline-src {baseline_src} has no service/__main__.py", err=True)
        raise typer.Exit(2)
    output_dir.mkdir(parents=True, exist_ok=True)
    meta = {**cpu_facts(), "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "requests": requests, "clients": clients, "command": "python benchmarks/startup.py " + " ".join(sys.argv[1:]),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    typer.echo(f"CPU: {meta['cpu']} ({meta['cores']} cores; flags: {meta['flags']}); load average "
               f"{meta['load_average_at_start']}", err=True)
    work = Path(tempfile.mkdtemp(prefix="zsc-startup-"))
    results = []
    try:
        cache = work / "cache"
        logs = {"ZSC_LOG_LEVEL": service_log_level}
        results.append(one_start("cold", cache, requests=requests, clients=clients, extra=logs))
        results.append(one_start("warm", cache, requests=requests, clients=clients, extra=logs))
        if not skip_remeasure:
            results.append(one_start("remeasure", cache, requests=requests, clients=clients,
                                     extra={**logs, "ZSC_REMEASURE": "true"}))
        if baseline_src is not None:
            base_cache = work / "baseline-cache"
            for name in ("baseline-cold", "baseline-warm"):
                results.append(one_start(name, base_cache, requests=requests, clients=clients, extra=logs,
                                         cwd=baseline_src.resolve()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = render(results, meta)
    (output_dir / "startup.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (output_dir / "startup.md").write_text(table + "\n")
    typer.echo(table)


if __name__ == "__main__":
    app()
