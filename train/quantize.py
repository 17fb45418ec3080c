"""Calibrate int8 quantization for a model directory and pick each engine's int8 mode by measurement.

Writes ``quantization.json`` next to the model (:class:`service.quantization.QuantizationSpec`): the
activation ranges of every Linear input, measured on real inputs (NLI pairs for a cross-encoder, texts for a
sentence encoder or a student classifier), and the int8 form each engine runs:

- DeepSparse: the ``integer`` form (SparseML's deployment graph), the one its int8 kernels take;
- ONNX Runtime: ``qdq`` (static) when it runs more pairs per second than float32 here, measured side by side
  on the same batches, and its outputs stay close to float32's (:func:`fidelity`; ``none`` otherwise). ``dynamic`` is measured and reported but never chosen: its
  activation ranges come from each batch, so a text's scores would depend on the other texts that share its
  batch - with micro-batching, on other users' requests - and the same request could get different suggestions.

The graphs themselves are derived files: the service builds them in its cache when it loads the model.

Example::

    python -m train.quantize service/models/nli-minilm-l6-pruned50 --data-dir ../shared/data
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from service.quantization import QuantizationSpec, calibrate, quantize_dynamic, quantize_static

logger = logging.getLogger("train.quantize")
app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0], rich_markup_mode=None)

#: Inputs are either (premise, hypothesis) pairs or single texts.
Example = tuple[str, str] | str


def feeds(tokenizer, examples: Sequence[Example], *, batch_size: int = 32, max_length: int = 128,
          ) -> Iterator[dict[str, np.ndarray]]:
    """Padded int64 batches (``input_ids``, ``attention_mask``, ``token_type_ids``) of ``examples``, as engines get them."""
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        if isinstance(chunk[0], tuple):
            enc = tokenizer([p for p, _ in chunk], [h for _, h in chunk], padding=True, truncation="only_first",
                            max_length=max_length, return_tensors="np")
        else:
            enc = tokenizer(list(chunk), padding=True, truncation=True, max_length=max_length, return_tensors="np")
        batch = {k: v.astype(np.int64) for k, v in enc.items()}
        batch.setdefault("token_type_ids", np.zeros_like(batch["input_ids"]))
        yield batch


def ort_rate(onnx_path: Path, batches: list[dict[str, np.ndarray]], *, num_threads: int | None = None,
             repeats: int = 3) -> float:
    """Rows per second of ONNX Runtime on ``batches`` (best of ``repeats`` passes, after one warm-up pass)."""
    return ort_run(onnx_path, batches, num_threads=num_threads, repeats=repeats)[0]


def ort_run(onnx_path: Path, batches: list[dict[str, np.ndarray]], *, num_threads: int | None = None,
            repeats: int = 3) -> tuple[float, list[np.ndarray]]:
    """``(rows/s, outputs)`` of ONNX Runtime on ``batches``: rows per second as :func:`ort_rate`, and the first
    output of each batch (from the warm-up pass)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = num_threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    rows = sum(len(b["input_ids"]) for b in batches)
    best, outputs = 0.0, []
    for attempt in range(repeats + 1):
        began = time.perf_counter()
        for batch in batches:
            out = session.run(None, {k: v for k, v in batch.items() if k in names})[0]
            if not attempt:
                outputs.append(out)
        if attempt:
            best = max(best, rows / (time.perf_counter() - began))
    return best, outputs


#: How close an int8 graph's outputs must stay to float32's to be served: the mean cosine of each row's output
#: (sentence embeddings, or token states) and, for logits, the share of rows whose argmax is unchanged. Measured on
#: an AVX2-only CPU: the packaged MiniLM's QDQ embeddings 0.992 (no accuracy lost), all-mpnet-base-v2's 0.002 with
#: 8-bit weights and 0.927 with 7-bit ones (2 points of AG News accuracy lost).
MIN_COSINE, MIN_AGREEMENT = 0.98, 0.95


def fidelity(reference: list[np.ndarray], outputs: list[np.ndarray]) -> dict:
    """How close ``outputs`` are to ``reference`` (float32's), batch by batch: ``{"cosine": mean over rows,
    "agreement": share of rows with the same argmax (logits only, else None), "faithful": bool}`` against
    :data:`MIN_COSINE` and :data:`MIN_AGREEMENT`."""
    cosines, same, rows = [], 0, 0
    logits = all(r.ndim == 2 and r.shape[1] <= 64 for r in reference)
    for ref, out in zip(reference, outputs):
        a = ref.reshape(len(ref), -1).astype(np.float64)
        b = out.reshape(len(out), -1).astype(np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cosines.append((a * b).sum(axis=1) / np.maximum(norms, 1e-12))
        if logits:
            same += int((ref.argmax(axis=1) == out.argmax(axis=1)).sum())
            rows += len(ref)
    cosine = float(np.concatenate(cosines).mean()) if cosines else 1.0
    agreement = same / rows if logits and rows else None
    faithful = (agreement >= MIN_AGREEMENT) if agreement is not None else cosine >= MIN_COSINE
    return {"cosine": round(cosine, 4), "agreement": None if agreement is None else round(agreement, 4),
            "faithful": bool(faithful)}


def build_spec(fp32_onnx: Path, tokenizer, examples: Sequence[Example], *, method: str = "percentile",
               percentile: float = 99.999, max_length: int = 128, num_threads: int | None = None,
               timing_examples: int = 256) -> tuple[QuantizationSpec, dict]:
    """Calibrate ranges on ``examples`` and choose ONNX Runtime's int8 mode by measured speed and fidelity.

    Each int8 graph's outputs are compared with float32's on the timing examples (:func:`fidelity`). On a CPU whose
    int8 kernels saturate (:func:`service.quantization.saturating_int8_cpu`) a static graph that strays is built
    again with 7-bit weights; when those are closer to float32, the spec keeps them (``reduce_range``), whether or not
    they are close enough to be served.

    Returns:
        the spec, and the measurements (rows/s and fidelity of fp32, qdq and dynamic on ONNX Runtime; ``qdq_8bit``
        too when 7-bit weights were tried). ONNX Runtime gets ``qdq`` when it beats float32 and stays faithful to
        it, else ``none`` (the module docstring says why never ``dynamic``).
    """
    from service.quantization import saturating_int8_cpu

    ranges = calibrate(fp32_onnx, feeds(tokenizer, examples, max_length=max_length), method=method,
                       percentile=percentile)
    calibration = {"method": method, "percentile": percentile if method == "percentile" else None,
                   "examples": len(examples), "max_length": max_length}
    spec = QuantizationSpec(ranges=ranges, engines={"deepsparse": "integer", "onnxruntime": "qdq"},
                            calibration=calibration)
    timing = list(feeds(tokenizer, examples[:timing_examples], max_length=max_length))
    rates, faithful = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        rate, reference = ort_run(Path(fp32_onnx), timing, num_threads=num_threads)
        rates["none"] = round(rate, 1)

        def measure(name: str, path: Path) -> None:
            rate, outputs = ort_run(path, timing, num_threads=num_threads)
            rates[name], faithful[name] = round(rate, 1), fidelity(reference, outputs)

        measure("qdq", quantize_static(fp32_onnx, Path(tmp) / "qdq.onnx", ranges, form="qdq"))
        measure("dynamic", quantize_dynamic(fp32_onnx, Path(tmp) / "dynamic.onnx"))
        if not faithful["qdq"]["faithful"] and saturating_int8_cpu():
            rates["qdq_8bit"], faithful["qdq_8bit"] = rates["qdq"], faithful["qdq"]
            measure("qdq", quantize_static(fp32_onnx, Path(tmp) / "qdq7.onnx", ranges, form="qdq", reduce_range=True))
            if faithful["qdq"]["cosine"] > faithful["qdq_8bit"]["cosine"]:
                spec = QuantizationSpec(ranges=ranges, engines=dict(spec.engines), reduce_range=True,
                                        calibration=calibration)
            else:
                rates["qdq"], faithful["qdq"] = rates["qdq_8bit"], faithful["qdq_8bit"]
    best = "qdq" if rates["qdq"] > rates["none"] and faithful["qdq"]["faithful"] else "none"  # never dynamic
    spec.engines["onnxruntime"] = best
    logger.info("ONNX Runtime rows/s on %d calibration examples: %s; fidelity to float32: %s -> %s%s",
                min(timing_examples, len(examples)), rates, faithful, best,
                " (7-bit weights)" if spec.reduce_range else "")
    return spec, {"onnxruntime_rows_per_s": rates, "onnxruntime_fidelity": faithful, "onnxruntime_choice": best,
                  "reduce_range": spec.reduce_range}


def nli_calibration_pairs(data_dir: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (premise, hypothesis) pairs drawn from the licence-clean NLI training mix (never from eval files)."""
    from train.nli_data import DEFAULT_MIX, load_mix

    pairs = load_mix(Path(data_dir) / "nli" / "train", DEFAULT_MIX, seed)
    random.Random(seed).shuffle(pairs)
    return [(p.premise, p.hypothesis) for p in pairs[:n]]


def text_calibration_examples(path: Path, n: int, seed: int = 0, text_field: str = "text") -> list[str]:
    """``n`` texts drawn from a JSONL file (``text`` field, or ``title`` + ``description``)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    texts = [r.get(text_field) or " ".join(filter(None, (r.get("title"), r.get("description")))) for r in rows]
    return [t for t in texts if t][:n]


@app.command()
def main(
    model_dir: Annotated[str, typer.Argument(help="Model to calibrate: a directory (full or compact sparse) or a "
                                             "model id of the service (default, dense, packaged:all-MiniLM-L6-v2).")],
    data_dir: Annotated[Path, typer.Option(help="The shared data folder (nli/ for NLI models).")] = Path("../shared/data"),
    texts: Annotated[Optional[list[Path]], typer.Option(help="JSONL of texts to calibrate on instead of NLI pairs "
                                                        "(sentence encoders, student classifiers); repeatable, "
                                                        "the examples are split evenly between the files.")] = None,
    task: Annotated[str, typer.Option(help="sequence-classification or sentence-embedding.")] = "sequence-classification",
    examples: Annotated[int, typer.Option(min=16, help="Calibration examples.")] = 512,
    method: Annotated[str, typer.Option(help="percentile or minmax.")] = "percentile",
    embedded: Annotated[bool, typer.Option(help="Write the spec into the package (service/models/quantization/"
                                           "<fingerprint>.json) instead of the model directory: for models this "
                                           "project ships no directory of, such as the packaged MiniLM.")] = False,
    seed: int = 0,
) -> None:
    """Write ``quantization.json`` into MODEL_DIR (ranges + the int8 mode of each engine)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from transformers import AutoTokenizer

    from service.onnx_export import onnx_for
    from service.sources import resolve_model

    if method not in ("percentile", "minmax"):
        typer.echo("error: --method must be percentile or minmax", err=True)
        raise typer.Exit(2)
    try:
        source = resolve_model(model_dir)
    except Exception as exc:
        typer.echo(f"error: {model_dir}: {exc}", err=True)
        raise typer.Exit(2) from None
    if texts:
        missing = [str(t) for t in texts if not t.is_file()]
        if missing:
            typer.echo(f"error: --texts {missing[0]} not found", err=True)
            raise typer.Exit(2)
        calibration: list = [text for file in texts
                             for text in text_calibration_examples(file, examples // len(texts), seed)]
    else:
        if not (data_dir / "nli" / "train").is_dir():
            typer.echo(f"error: --data-dir {data_dir} has no nli/train (or give --texts)", err=True)
            raise typer.Exit(2)
        calibration = nli_calibration_pairs(data_dir, examples, seed)
    from service.quantization import embedded_spec_path
    from service.sources import default_cache_dir

    fp32 = onnx_for(source, default_cache_dir(), task)
    spec, measured = build_spec(fp32, AutoTokenizer.from_pretrained(source.path), calibration, method=method)
    target = source.compact_path or source.path
    path = spec.save(target, path=embedded_spec_path(source.fingerprint()) if embedded else None)
    typer.echo(f"wrote {path}: deepsparse={spec.engines['deepsparse']}, onnxruntime={spec.engines['onnxruntime']}"
               f"{', 7-bit weights' if spec.reduce_range else ''} (ONNX Runtime rows/s: "
               f"{measured['onnxruntime_rows_per_s']}; fidelity to float32: {measured['onnxruntime_fidelity']})")


if __name__ == "__main__":
    app()
