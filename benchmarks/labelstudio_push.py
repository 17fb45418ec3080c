"""``annotate push --tool labelstudio`` of a whole pool against Label Studio's own import ceiling, in one run on one
local Label Studio (``annotate.labelstudio.stack``: 1.23.2, SQLite).

Steps, each into a new project of the same server:

1. **ceiling**: Label Studio's import endpoint fed pre-built tasks (the text, the content id and one prediction, what
   push sends) in requests of ``--batch`` tasks: what the server takes with almost no client work;
2. **push, cold** (once): ``python -m annotate push POOL --tool labelstudio`` as a user runs it (a fresh process and an
   empty annotate cache: every text scored and embedded in-process, the head fitted, the tasks imported);
3. **push, warm**: the same command into another project with the cache of step 2's pool (what a re-push, or a
   second project over the same texts, costs: no encoder pass).

The server slows as its SQLite database grows (measured: about 10% from an empty one to 32,000 tasks), and one
import of the whole pool varies by about 5% from run to run, so the ceiling and the warm push are measured in
``--rounds`` adjacent pairs (the order alternating), each push against the ceiling of its own pair; the reported
ratio is the median over pairs. The cold push is compared with the ceiling measured just before it.

Reported per step: tasks, wall seconds (the whole command: interpreter start to exit), tasks/s, and the pushes' own
split from ``--summary-json``. CPU model, flags and load average printed with the figures. Not run by CI::

    python -m benchmarks.labelstudio_push --data-dir ../shared/data --output-dir benchmarks/results/labelstudio_push
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_facts  # noqa: E402

POOL = "classification/ag_news/train_unlabeled_8k_description_only.jsonl"
LABELS = ["world news", "sports", "business", "science and technology"]
TEMPLATE = "This news article is about {}."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results/labelstudio_push"))
    parser.add_argument("--limit", type=int, default=None, help="First N texts of the pool (default: all).")
    parser.add_argument("--batch", type=int, default=1000, help="Tasks a ceiling import request (push's own size).")
    parser.add_argument("--rounds", type=int, default=5, help="Adjacent (ceiling, warm push) pairs.")
    args = parser.parse_args(argv)

    from annotate.cache import DatasetCache
    from annotate.labelstudio.client import LabelStudio
    from annotate.labelstudio.config import build_config, parse_config
    from annotate.labelstudio.stack import LabelStudioStack
    from annotate.tools import record_id

    texts = [json.loads(line)["text"] for line in (args.data_dir / POOL).read_text(encoding="utf-8").splitlines()
             if line.strip()][:args.limit]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    machine = cpu_facts()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, flags {machine['flags']}, load "
          f"{machine['load_average']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="ls-push-"))
    stack = LabelStudioStack.start(work / "labelstudio")
    result = {"machine": machine, "tasks": len(texts), "batch": args.batch, "rounds": [], "steps": {}}
    try:
        client = LabelStudio(stack.url, stack.api_key)
        pool = work / "pool.jsonl"
        pool.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANNOTATE_", "LABEL_STUDIO_URL",
                                                                          "LABEL_STUDIO_API_KEY"))}
        env.update(LABEL_STUDIO_URL=stack.url, LABEL_STUDIO_API_KEY=stack.api_key, ANNOTATE_TOOL="labelstudio",
                   ANNOTATE_CACHE_DIR=str(work / "annotate-cache"))
        projects = iter(range(1, 1000))

        def ceiling() -> dict:
            project = client.create_project(f"ceiling {next(projects)}", build_config(LABELS))
            config = parse_config(project["label_config"])
            tasks = [{"data": {"text": t, "zsp_id": record_id(t, None)},
                      "predictions": [{"model_version": "ceiling", "score": 0.5,
                                       "result": config.result(LABELS[i % 4])}]} for i, t in enumerate(texts)]
            began = time.perf_counter()
            for start in range(0, len(tasks), args.batch):
                client.import_tasks(project["id"], tasks[start:start + args.batch])
            seconds = time.perf_counter() - began
            print(f"ceiling: {len(tasks)} tasks in {seconds:.2f} s = {len(tasks) / seconds:.1f} tasks/s", flush=True)
            return {"seconds": round(seconds, 2), "tasks_per_s": round(len(tasks) / seconds, 1)}

        def push(name: str) -> dict:
            project_name = f"push {name}"
            if name != "cold":  # the cold push's cache, under this project's name
                caches = work / "annotate-cache"
                shutil.copytree(DatasetCache(caches, stack.url, "labelstudio", "push cold").root,
                                DatasetCache(caches, stack.url, "labelstudio", project_name).root)
            summary = work / f"{name}.json"
            command = [sys.executable, "-m", "annotate", "push", str(pool), "--dataset", project_name,
                       "--hypothesis-template", TEMPLATE, "--summary-json", str(summary), "--log-level", "warning",
                       *sum((["-l", label] for label in LABELS), [])]
            began = time.perf_counter()
            run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - began
            if run.returncode:
                raise SystemExit(f"push {name} failed: {run.stderr[-2000:]}")
            facts = json.loads(summary.read_text())
            print(f"push {name}: {facts['added']} tasks in {seconds:.2f} s = {len(texts) / seconds:.1f} tasks/s",
                  flush=True)
            return {"seconds": round(seconds, 2), "tasks_per_s": round(len(texts) / seconds, 1),
                    "added": facts["added"], "loop_seconds": round(facts["seconds"], 2)}

        first = ceiling()
        cold = push("cold")
        cold["ratio_to_ceiling"] = round(cold["tasks_per_s"] / first["tasks_per_s"], 3)
        result["steps"] = {"ceiling_before_cold": first, "push_cold": cold}
        for number in range(args.rounds):
            order = ("ceiling", "push") if number % 2 == 0 else ("push", "ceiling")
            pair = {step: ceiling() if step == "ceiling" else push(f"warm {number + 1}") for step in order}
            pair["ratio_to_ceiling"] = round(pair["push"]["tasks_per_s"] / pair["ceiling"]["tasks_per_s"], 3)
            pair["order"] = list(order)
            result["rounds"].append(pair)
            print(f"round {number + 1}: warm push / ceiling = {pair['ratio_to_ceiling']:.3f}", flush=True)
        ratios = [pair["ratio_to_ceiling"] for pair in result["rounds"]]
        result["steps"]["push_warm"] = {
            "ratio_to_ceiling_median": round(float(statistics.median(ratios)), 3),
            "ratio_to_ceiling_min": min(ratios), "ratio_to_ceiling_max": max(ratios),
            "tasks_per_s_median": round(float(statistics.median(p["push"]["tasks_per_s"]
                                                                for p in result["rounds"])), 1),
            "ceiling_tasks_per_s_median": round(float(statistics.median(p["ceiling"]["tasks_per_s"]
                                                                      for p in result["rounds"])), 1)}
        print(f"warm push / ceiling: median {result['steps']['push_warm']['ratio_to_ceiling_median']:.3f} over "
              f"{len(ratios)} pairs ({min(ratios):.3f}-{max(ratios):.3f}); cold push / ceiling "
              f"{cold['ratio_to_ceiling']:.3f}", flush=True)
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["machine_after"] = cpu_facts()
    (args.output_dir / "labelstudio_push.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
