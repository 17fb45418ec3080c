"""What ONNX Runtime itself offers for the shipped NLI teacher, measured side by side on this CPU.

The same real inputs for every variant (the first ``--texts`` AG News test texts x 4 labels, ``This text is about
{}.``), through the service's own zero-shot core (tokenizer, length-sorted batches of ``--batch-size`` pairs,
dynamic padding), in one process; the variants run in interleaved rounds (``--rounds``, best and median
reported) so drift in the machine's load hits all of them alike. Variants:

* ``qdq``: the service's form on ONNX Runtime (static int8, ``QuantizeLinear -> DequantizeLinear`` with
  per-channel weight scales, which ONNX Runtime fuses into integer MatMuls);
* ``qdq-nospin``: the same with ``session.intra_op.allow_spinning = 0`` (idle threads sleep instead of spinning);
* ``integer``: SparseML's ``MatMulInteger`` form (the one DeepSparse runs), here on ONNX Runtime;
* ``dynamic``: dynamic int8 (activation ranges computed per batch);
* ``sparse-fp32``: the pruned teacher in float32; ``dense-fp32``: the dense teacher it was pruned from.

Accuracy is on the same texts (argmax of the entailment scores across labels), and "max |dlogit|" is the largest
change of a logit against ``qdq``. The CPU model, its SIMD flags and the load average are printed with the
figures. Not run by CI::

    python benchmarks/ort_variants.py --data-dir ../shared/data --output-dir benchmarks/results/ort_variants
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_facts  # noqa: E402
from benchmarks.sparse_speed import load_tasks  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])

#: variant -> (model, int8 form, allow_spinning)
VARIANTS = {
    "qdq": ("default", "qdq", None),
    "qdq-nospin": ("default", "qdq", False),
    "integer": ("default", "integer", None),
    "dynamic": ("default", "dynamic", None),
    "sparse-fp32": ("default", "none", None),
    "dense-fp32": ("dense", "none", None),
}


def build(variant: str, threads: int, batch_size: int):
    """The NLI method of ``variant``: the service's loader on ONNX Runtime, its engine rebuilt with the options."""
    from service.config import Settings
    from service.engines.onnxruntime import OnnxRuntimeEngine
    from service.loader import load_methods

    model, form, spinning = VARIANTS[variant]
    served = load_methods(Settings(model=model, embedding_model="none", method="nli", engine="onnxruntime",
                                   quantization=form, num_threads=threads, batch_size=batch_size, batch_wait_ms=0,
                                   calibrate=False))
    method = served.methods["nli"]
    if spinning is not None:
        path = served.models["nli"].engine.onnx_path
        engine = OnnxRuntimeEngine(path, num_threads=threads, allow_spinning=spinning)
        method.engine = engine
        method.runner.engine = engine
    return method


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="The shared data folder (holds classification/).")] = Path("../shared/data"),
    output_dir: Annotated[Path, typer.Option(help="Where ort_variants.{json,md} go.")] = Path("runs/ort_variants"),
    variants: Annotated[Optional[list[str]], typer.Option("--variant", help="Only these variants (repeatable).")] = None,
    texts: Annotated[int, typer.Option(help="AG News test texts (x 4 labels).", min=8)] = 400,
    rounds: Annotated[int, typer.Option(help="Interleaved timing rounds.", min=1)] = 3,
    threads: Annotated[int, typer.Option(help="Intra-op threads.", min=1)] = 2,
    batch_size: Annotated[int, typer.Option(help="Pairs per forward pass (the service's default).", min=1)] = 32,
    request_texts: Annotated[int, typer.Option(help="Texts per call, as a request would send them.", min=1)] = 8,
) -> None:
    """Time every variant on the same pairs, interleaved, and write the table."""
    chosen = variants or list(VARIANTS)
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        typer.echo(f"error: unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}", err=True)
        raise typer.Exit(2)
    if not (data_dir / "classification/ag_news/test.jsonl").is_file():
        typer.echo(f"error: {data_dir}/classification/ag_news/test.jsonl not found (--data-dir)", err=True)
        raise typer.Exit(2)
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    task = load_tasks(data_dir, texts, 8)[0]
    labels, template = list(task["labels"]), task["template"]
    requests = [task["texts"][i:i + request_texts] for i in range(0, len(task["texts"]), request_texts)]
    facts = cpu_facts()
    typer.echo(f"CPU: {facts['cpu']} ({facts['cores']} cores; flags: {facts['flags']}); "
               f"load average {[round(x, 2) for x in os.getloadavg()]}", err=True)
    methods = {v: build(v, threads, batch_size) for v in chosen}
    logits, seconds = {}, {v: [] for v in chosen}
    for v, method in methods.items():  # warm-up, and the logits every round reproduces
        logits[v] = np.concatenate([method.raw(r, labels, hypothesis_template=template) for r in requests])
    load_before = [round(x, 2) for x in os.getloadavg()]
    for _ in range(rounds):
        for v, method in methods.items():
            t0 = time.perf_counter()
            for r in requests:
                method.raw(r, labels, hypothesis_template=template)
            seconds[v].append(time.perf_counter() - t0)
    load_after = [round(x, 2) for x in os.getloadavg()]
    pairs = len(task["texts"]) * len(labels)
    reference = logits.get("qdq")
    rows = []
    for v, method in methods.items():
        scores = method.probabilities(logits[v], multi_label=False)
        accuracy = float(np.mean(np.array([labels[i] for i in scores.argmax(axis=1)]) == np.array(task["gold"])))
        rows.append({"variant": v, "model": VARIANTS[v][0], "int8": VARIANTS[v][1], "allow_spinning": VARIANTS[v][2],
                     "pairs_per_s_best": round(pairs / min(seconds[v]), 1),
                     "pairs_per_s_median": round(pairs / float(np.median(seconds[v])), 1),
                     "seconds": [round(s, 3) for s in seconds[v]], "accuracy": round(accuracy, 4),
                     "max_abs_logit_change": (None if reference is None or reference.shape != logits[v].shape
                                              else round(float(np.abs(logits[v] - reference).max()), 4))})
    base = next((r for r in rows if r["variant"] == "qdq"), rows[0])
    meta = {**facts, "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "texts": len(task["texts"]), "pairs": pairs, "rounds": rounds, "threads": threads, "batch_size": batch_size,
            "request_texts": request_texts, "load_average_before": load_before, "load_average_after": load_after,
            "command": "python benchmarks/ort_variants.py " + " ".join(sys.argv[1:])}
    lines = [f"CPU: {meta['cpu']} ({meta['cores']} cores; flags: {meta['flags']}); {threads} threads; "
             f"{len(task['texts'])} AG News texts x {len(labels)} labels = {pairs} pairs, calls of {request_texts} texts, "
             f"batches of {batch_size}; {rounds} interleaved rounds; load average {load_before} -> {load_after}; "
             f"{meta['date']}", "",
             "| variant | model | int8 | pairs/s best | pairs/s median | x qdq (median) | accuracy | max abs logit change |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['model']} | {r['int8']} | {r['pairs_per_s_best']} | "
                     f"{r['pairs_per_s_median']} | {r['pairs_per_s_median'] / base['pairs_per_s_median']:.2f} | "
                     f"{r['accuracy']:.4f} | {r['max_abs_logit_change']} |")
    table = "\n".join(lines)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "ort_variants.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (output_dir / "ort_variants.md").write_text(table + "\n")
    typer.echo(table)


if __name__ == "__main__":
    app()
