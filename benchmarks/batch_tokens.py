"""Rows/s of each default model by batch shape (rows x tokens): where ``ZSC_MAX_BATCH_TOKENS`` should cut.

Loads both default models on ONNX Runtime (the supported engine) as the service does, and for every sequence length
(64 to 512 tokens, up to each model's limit) times batches of 2 to 32 rows on the same synthetic ids for
``--seconds`` each (1.5 s). Per cap (1,024 to 16,384 padded tokens a call) it reports the rows/s the service would get at
each length (the largest batch within the cap and ``batch_size`` 32), their geometric mean, and the resident memory
a call adds at the cap's largest shape. The default cap (``ZSC_MAX_BATCH_TOKENS``) was chosen from this table on the
machine it names; ``benchmarks/load.py`` checks it under concurrent load, a separate measurement.

    .venv/bin/python benchmarks/batch_tokens.py --output-dir benchmarks/results/batch_tokens
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_facts, cpu_line  # noqa: E402

LENGTHS = (64, 128, 256, 512)
ROWS = (2, 4, 8, 16, 32)
CAPS = (1024, 2048, 4096, 8192, 16384)


def _feed(names, rows: int, length: int) -> dict[str, np.ndarray]:
    feed = {"input_ids": np.full((rows, length), 1000, dtype=np.int64),
            "attention_mask": np.ones((rows, length), dtype=np.int64),
            "token_type_ids": np.zeros((rows, length), dtype=np.int64)}
    return {k: v for k, v in feed.items() if k in names}


def main(output_dir: Annotated[Path, typer.Option(help="Where batch_tokens.json and .md go.")] = Path("runs/batch_tokens"),
         seconds: Annotated[float, typer.Option(help="Timing per shape, s.")] = 1.5) -> None:
    """Time every (rows, tokens) shape on both default models and tabulate rows/s per token cap."""
    from service.config import Settings
    from service.loader import load_methods

    facts = cpu_facts()
    print(f"CPU: {cpu_line(facts)}", flush=True)
    served = load_methods(Settings(engine="onnxruntime", max_batch_tokens=0))
    rates: dict[str, dict[str, float]] = {}
    try:
        for role, model in served.models.items():
            rates[role] = {}
            for length in (x for x in LENGTHS if x <= model.info["max_length"]):
                for rows in ROWS:
                    feed = _feed(model.engine.input_names, rows, length)
                    model.engine(feed)
                    began, done = time.perf_counter(), 0
                    while time.perf_counter() - began < seconds:
                        model.engine(feed)
                        done += rows
                    rates[role][f"{rows}x{length}"] = round(done / (time.perf_counter() - began), 1)
                print(role, length, {k: v for k, v in rates[role].items() if k.endswith(f"x{length}")}, flush=True)
    finally:
        served.close()

    def at_cap(role: str, cap: int, length: int) -> float | None:
        fitting = [r for r in ROWS if r * length <= cap] or [min(ROWS)]
        return rates[role].get(f"{max(fitting)}x{length}")

    rows_md = []
    summary: dict[str, dict] = {}
    for cap in CAPS:
        cells, means = [], {}
        for role in rates:
            values = [at_cap(role, cap, length) for length in LENGTHS]
            values = [v for v in values if v is not None]
            means[role] = round(math.exp(sum(map(math.log, values)) / len(values)), 1)
            cells.append(" / ".join(f"{v:g}" for v in values))
        summary[str(cap)] = means
        rows_md.append(f"| {cap} | " + " | ".join(cells) + " | " + " / ".join(f"{means[r]:g}" for r in rates) + " |")
    best = {role: max(summary, key=lambda c: summary[c][role]) for role in rates}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "batch_tokens.json").write_text(json.dumps({"facts": facts, "rows_per_s": rates,
                                                              "geometric_mean_by_cap": summary, "best_cap": best},
                                                             indent=1))
    roles = list(rates)
    md = [f"CPU: {cpu_line(facts)}", "",
          f"Rows/s per token cap (the largest batch of at most 32 rows within the cap), at {', '.join(map(str, LENGTHS))}"
          f" tokens; models: {', '.join(roles)}", "",
          "| cap | " + " | ".join(f"{r} rows/s by length" for r in roles) + " | geometric mean (" + " / ".join(roles)
          + ") |", "|---|" + "---|" * (len(roles) + 1), *rows_md, "",
          f"Best cap by geometric mean: {best}", "", "Every shape:", "",
          "| model | " + " | ".join(f"{r}x{length}" for length in LENGTHS for r in ROWS) + " |",
          "|---|" + "---|" * (len(LENGTHS) * len(ROWS)),
          *[f"| {role} | " + " | ".join(f"{rates[role].get(f'{r}x{length}', '-')}" for length in LENGTHS for r in ROWS)
            + " |" for role in roles]]
    (output_dir / "batch_tokens.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    typer.run(main)
