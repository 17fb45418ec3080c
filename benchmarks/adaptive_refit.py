"""How long a refit of the adapted head takes: fit + re-scoring every pending record of a scored pool.

Times :func:`annotate.adaptive.adapt` (what ``refresh`` and ``simulate`` run after each round) on a stored pool
(a :class:`pool.store.PoolStore`, as ``push``, ``score`` and ``simulate`` write them) for several review
counts. The reviews are random records labelled with their zero-shot top label flipped at random for a third of
them (timing does not depend on which labels they are). Prints the CPU model, flags and load average beside the
figures: on a shared machine the load changes them several-fold.

    python benchmarks/adaptive_refit.py ~/.cache/zeroshot-preannotate/annotate/simulate/<key> --reviews 0,100,300,1000
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_facts  # noqa: E402


def main(store: Annotated[Path, typer.Argument(help="A scored pool folder (meta.json + part-*.parquet).")],
         reviews: Annotated[str, typer.Option(help="Comma-separated review counts.")] = "0,100,300,1000",
         repeats: Annotated[int, typer.Option(help="Timings per count (the median is reported).", min=1)] = 3,
         output: Annotated[Path | None, typer.Option(help="Also write the figures here as JSON.")] = None) -> None:
    """Time adapt() on STORE for each review count."""
    from annotate.adaptive import adapt
    from pool.store import PoolStore

    pool = PoolStore(store).load(with_texts=False)
    labels, k = pool.labels, len(pool.labels)
    rng = np.random.default_rng(0)
    facts = cpu_facts()
    rows = []
    for count in [int(c) for c in reviews.split(",")]:
        chosen = rng.choice(len(pool), size=count, replace=False)
        flip = rng.random(count) < 1 / 3
        reviewed = {int(r): int((pool.scores[r].argmax() + (rng.integers(1, k) if f else 0)) % k)
                    for r, f in zip(chosen, flip)}
        seconds = []
        for _ in range(repeats):
            began = time.perf_counter()
            result = adapt(pool.embeddings, pool.scores, labels, ids=pool.ids, reviewed=reviewed)
            seconds.append(time.perf_counter() - began)
        rows.append({"reviewed": count, "pool": len(pool), "median_seconds": round(statistics.median(seconds), 3),
                     "min_seconds": round(min(seconds), 3), "mode": result.report.mode,
                     "load_average_after": os.getloadavg()[0]})
        typer.echo(f"{count:>5} reviews, pool {len(pool)}: refit + re-score {rows[-1]['median_seconds']:.2f} s "
                   f"(min {rows[-1]['min_seconds']:.2f}), {result.report.mode}")
    typer.echo(f"CPU: {facts['cpu']}; flags: {' '.join(facts['flags'])}; cores {facts['cores']}; load average "
               f"{' '.join(f'{v:.2f}' for v in facts['load_average'])} at the start")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({**facts, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
