"""``annotate push`` of a whole pool against Argilla's own ceiling, and against the push of an older checkout, in
one run on one local stack.

One fresh local Argilla stack (``tests.argilla_stack``: argilla-server 2.8.0, osmem, Redis, SQLite) and one
zero-shot service (``python -m service``, ``--engine``, default settings otherwise) serve every step, in order:

1. **ceiling**: pre-serialised bulk upserts of push-like records (text, suggestion, metadata, a 384-d vector) at
   ``--ceiling-batch`` records a request with ``--ceiling-concurrency`` in flight
   (``benchmarks.argilla_ceiling.run_raw``): what the server can take, with almost no client work;
2. **push**: ``python -m annotate push POOL`` of this checkout (adapted suggestions, vectors) into a new dataset,
   timed as a user runs it (a fresh process, a fresh annotate cache);
3. **baseline** (with ``--baseline-src DIR``): the same command from another checkout's ``annotate`` package (for
   example ``git archive da730b0 annotate service tests | tar -x -C runs/push_baseline``) into another dataset.

Reported per step: records, wall seconds, records/s, and for the pushes their own split (scoring, Argilla
upserts, head fit) from ``--summary-json``; then push / ceiling and push / baseline. CPU model, flags and the load
average are printed with the figures. Not run by CI::

    python -m benchmarks.push_throughput --data-dir ../shared/data --output-dir benchmarks/results/push_throughput \
        --baseline-src runs/push_baseline
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.argilla_ceiling import POOL, make_records, new_dataset, run_raw, texts_from  # noqa: E402
from benchmarks.machine import cpu_facts  # noqa: E402

LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def count_rows(path: Path) -> int:
    with path.open(encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def run_push(cwd: Path, pool: Path, dataset: str, service_url: str, env: dict, workdir: Path, tag: str,
             limit: int | None = None, *extra: str) -> dict:
    """One ``python -m annotate push`` from the checkout at ``cwd`` (of the first ``limit`` rows when given): wall
    time and its own summary."""
    summary_path = workdir / f"{tag}-summary.json"
    command = [sys.executable, "-m", "annotate", "push", str(pool.resolve()), *sum((["--label", x] for x in LABELS), []),
               "--hypothesis-template", "This text is about {}.", "--dataset", dataset, "--service-url", service_url,
               "--summary-json", str(summary_path), *(["--limit", str(limit)] if limit else []), *extra]
    child_env = {**env, "ANNOTATE_CACHE_DIR": str(workdir / f"{tag}-cache"), "PYTHONPATH": str(cwd)}
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    completed = subprocess.run(command, cwd=cwd, env=child_env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    (workdir / f"{tag}.log").write_text(completed.stdout + "\n" + completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"{tag} push exited {completed.returncode}: {completed.stderr.strip().splitlines()[-1:]}")
    summary = json.loads(summary_path.read_text())
    keep = ("read", "pushed", "skipped_existing", "failed", "total_seconds", "scoring_seconds", "argilla_seconds",
            "fit_seconds", "embedded", "agent", "head_changed_label", "head_changed", "head_fit_rows", "rewritten")
    return {"step": tag, "checkout": str(cwd), "wall_seconds": round(wall, 1),
            "records_per_s": round(summary["pushed"] / wall, 1), "load_1m_before": round(load_before, 2),
            "load_1m_after": round(os.getloadavg()[0], 2), **{k: summary.get(k) for k in keep}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ZSC_SHARED_DATA",
                                                                              REPO.parent / "shared" / "data")))
    parser.add_argument("--output-dir", type=Path, default=REPO / "runs" / "push_throughput")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="another checkout (its annotate/ package) whose push runs side by side")
    parser.add_argument("--ceiling-records", type=int, default=1000)
    parser.add_argument("--ceiling-batch", type=int, default=256)
    parser.add_argument("--ceiling-concurrency", type=int, default=2)
    parser.add_argument("--engine", default="onnxruntime", help="the service's ZSC_ENGINE")
    parser.add_argument("--no-adapt-step", action="store_true",
                        help="also push this checkout with --no-adapt (zero-shot suggestions, upserted while scoring)")
    parser.add_argument("--limit", type=int, default=None,
                        help="push only the first N rows of the pool (a subset, when the whole pool does not fit the "
                             "time; the ceiling's records are --ceiling-records either way)")
    args = parser.parse_args(argv)
    pool = args.data_dir / POOL
    if not pool.is_file():
        print(f"error: {pool} not found (set --data-dir or ZSC_SHARED_DATA)", file=sys.stderr)
        return 2
    if args.baseline_src is not None and not (args.baseline_src / "annotate" / "__main__.py").is_file():
        print(f"error: --baseline-src {args.baseline_src} has no annotate/__main__.py", file=sys.stderr)
        return 2
    import argilla as rg

    from benchmarks.service_process import ServiceProcess
    from tests.argilla_stack import ArgillaStack

    cpu = cpu_facts()
    meta = {"date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(), "cpu": cpu,
            "pool": str(pool), "pool_rows": min(count_rows(pool), args.limit or 10**12), "engine": args.engine,
            "command": "python -m benchmarks.push_throughput " + " ".join(argv or sys.argv[1:])}
    print(f"CPU {cpu['cpu']} ({cpu['cores']} cores) flags {cpu['flags']}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="zsc-push-"))
    steps = []
    stack = ArgillaStack.start(workdir / "stack")
    try:
        env = {**os.environ, **stack.env(), "NM_DISABLE_ANALYTICS": "1"}
        client = rg.Argilla(api_url=stack.url, api_key=stack.api_key, timeout=300)
        with ServiceProcess({"ZSC_ENGINE": args.engine}) as service:
            print(f"service ready in {service.ready_s:.1f} s at {service.url}", flush=True)
            records = make_records(texts_from(args.data_dir, args.ceiling_records), 0, "ceiling")
            dataset = new_dataset(client, stack.workspace, "ceiling")
            load_before = os.getloadavg()[0]
            seconds = run_raw(client, dataset, records, args.ceiling_batch, args.ceiling_concurrency)
            steps.append({"step": "ceiling", "records": len(records), "batch_size": args.ceiling_batch,
                          "concurrency": args.ceiling_concurrency, "wall_seconds": round(seconds, 1),
                          "records_per_s": round(len(records) / seconds, 1), "retries_5xx": run_raw.retries,
                          "load_1m_before": round(load_before, 2), "load_1m_after": round(os.getloadavg()[0], 2)})
            print(json.dumps(steps[-1]), flush=True)
            steps.append(run_push(REPO, pool, "push-this", service.url, env, workdir, "push", args.limit))
            print(json.dumps(steps[-1]), flush=True)
            if args.no_adapt_step:
                steps.append(run_push(REPO, pool, "push-no-adapt", service.url, env, workdir, "push-no-adapt",
                                      args.limit, "--no-adapt"))
                print(json.dumps(steps[-1]), flush=True)
            if args.baseline_src is not None:
                steps.append(run_push(args.baseline_src.resolve(), pool, "push-baseline", service.url, env, workdir,
                                      "baseline", args.limit))
                print(json.dumps(steps[-1]), flush=True)
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    by = {s["step"]: s for s in steps}
    ratios = {"push_over_ceiling": round(by["push"]["records_per_s"] / by["ceiling"]["records_per_s"], 3)}
    if "push-no-adapt" in by:
        ratios["push_no_adapt_over_ceiling"] = round(by["push-no-adapt"]["records_per_s"]
                                                     / by["ceiling"]["records_per_s"], 3)
    if "baseline" in by:
        ratios["push_over_baseline"] = round(by["push"]["records_per_s"] / by["baseline"]["records_per_s"], 2)
    lines = [f"CPU: {cpu['cpu']} ({cpu['cores']} cores; flags {cpu['flags']}); {meta['date']}; pool "
             f"{meta['pool_rows']} rows{' (--limit)' if args.limit else ''}; service engine {args.engine}",
             f"Command: {meta['command']}", "",
             "| step | records | wall s | records/s | scoring s | Argilla s | head fit s | load 1m before -> after |",
             "|---|---|---|---|---|---|---|---|"]
    for s in steps:
        lines.append(f"| {s['step']} | {s.get('pushed', s.get('records'))} | {s['wall_seconds']} | {s['records_per_s']} | "
                     f"{s.get('scoring_seconds', '-')} | {s.get('argilla_seconds', '-')} | {s.get('fit_seconds', '-')} | "
                     f"{s['load_1m_before']} -> {s['load_1m_after']} |")
    lines += ["", "Ratios: " + ", ".join(f"{k} {v}" for k, v in ratios.items())]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "push_throughput.json").write_text(json.dumps({"meta": meta, "steps": steps, "ratios": ratios},
                                                                     indent=2) + "\n")
    (args.output_dir / "push_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
