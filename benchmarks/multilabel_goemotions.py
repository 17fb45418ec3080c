"""GoEmotions (Ekman) for the multi-label adapted head: a seeded pool / evaluation split, then ``simulate``.

The shared file (``classification/dev_tasks/goemotions/test_part.jsonl``, 2,025 Reddit comments, Demszky et al.
2020) has no split. This script makes one: the rows in a random order drawn with ``numpy.random.default_rng(seed)``
(``permutation``), the first ``round(eval_fraction * n)`` rows of that order are the evaluation split, the rest the
pool; both keep the file's fields. They are written outside the repository (``--work-dir``, default
``runs/goemotions_ekman``), so the data is read from the shared folder and never copied into the project.

Then it prints (or, with ``--run``, runs) the ``simulate`` command whose table docs/adaptive.md ("Multi-label")
shows::

    .venv/bin/python benchmarks/multilabel_goemotions.py --data-dir ../shared/data --run \\
        --output benchmarks/results/multilabel/goemotions_ekman.json

``simulate`` caches the scored splits (``~/.cache/zeroshot-preannotate/annotate/simulate``), so only the first run
pays for the NLI scoring (2,025 x 7 pairs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

EKMAN = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]
TEMPLATE = "This person feels {}."  # the emotion template of docs/methods.md, chosen on dair-ai emotion, not here


def split(source: Path, work_dir: Path, eval_fraction: float = 0.4, seed: int = 0) -> tuple[Path, Path]:
    """Write ``pool.jsonl`` and ``eval.jsonl`` of ``source`` into ``work_dir`` (see the module docstring).

    Returns:
        ``(pool path, eval path)``.

    Raises:
        ValueError: ``eval_fraction`` outside (0, 1) or a split would be empty.
    """
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must lie in (0, 1); got {eval_fraction}")
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = np.random.default_rng(seed).permutation(len(lines))
    n_eval = int(round(eval_fraction * len(lines)))
    if n_eval == 0 or n_eval == len(lines):
        raise ValueError(f"{source} has {len(lines)} rows: a split would be empty")
    work_dir.mkdir(parents=True, exist_ok=True)
    pool, evaluation = work_dir / "pool.jsonl", work_dir / "eval.jsonl"
    evaluation.write_text("".join(lines[i] + "\n" for i in sorted(order[:n_eval])), encoding="utf-8")
    pool.write_text("".join(lines[i] + "\n" for i in sorted(order[n_eval:])), encoding="utf-8")
    return pool, evaluation


def simulate_command(pool: Path, evaluation: Path, output: Path, budgets: str = "0,100,300",
                     strategy: str = "random", seed: int = 0) -> list[str]:
    """The ``python -m annotate simulate`` command line for the split (NLI zero-shot, ``--multi-label``)."""
    labels = [arg for label in EKMAN for arg in ("--label", label)]
    return [sys.executable, "-m", "annotate", "simulate", str(pool), "--eval", str(evaluation), "--multi-label",
            "--gold-column", "ekman", *labels, "--hypothesis-template", TEMPLATE, "--method", "nli",
            "--budgets", budgets, "--strategy", strategy, "--seed", str(seed), "--report-json", str(output)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the shared data folder (../shared/data)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/goemotions_ekman"))
    parser.add_argument("--eval-fraction", type=float, default=0.4)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--budgets", default="0,100,300")
    parser.add_argument("--strategy", default="random,least-confidence")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/multilabel/goemotions_ekman.json"))
    parser.add_argument("--run", action="store_true", help="run simulate (else print the command)")
    args = parser.parse_args(argv)
    source = args.data_dir / "classification/dev_tasks/goemotions/test_part.jsonl"
    if not source.is_file():
        print(f"error: {source} not found (pass --data-dir, the shared data folder)", file=sys.stderr)
        return 2
    pool, evaluation = split(source, args.work_dir, args.eval_fraction, args.split_seed)
    print(json.dumps({"pool": str(pool), "pool_rows": sum(1 for _ in pool.open()), "eval": str(evaluation),
                      "eval_rows": sum(1 for _ in evaluation.open()), "seed": args.split_seed}))
    command = simulate_command(pool, evaluation, args.output, args.budgets, args.strategy)
    print(" ".join(shlex.quote(c) for c in command))
    if args.run:
        import os

        from service.cpu import cpu_facts

        before = os.getloadavg()
        code = subprocess.run(command).returncode
        if code == 0:  # the machine next to the figures: CPU model, flags, load average
            add_machine(args.output, before, os.getloadavg(), cpu_facts())
        return code
    return 0


def add_machine(report_path: Path, load_before, load_after, cpu: dict) -> None:
    """Add ``machine`` (CPU model and flags, load averages before and after the run) to a simulate report."""
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report["machine"] = {"cpu": cpu, "load_average_before": [round(v, 2) for v in load_before],
                         "load_average_after": [round(v, 2) for v in load_after]}
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
