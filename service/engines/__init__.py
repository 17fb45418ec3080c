"""Engines behind one interface (:class:`~service.engines.base.Engine`), and how one is chosen.

``auto`` measures: it times each available engine (DeepSparse and ONNX Runtime; the torch reference engine
only when neither can run the model) on the same synthetic batches of the service's batch size and a spread of
sequence lengths (:data:`TIMING_SEQ_LENS`) in a child process, remembers the result in the cache directory under
a key of what decides it, and builds only the fastest (:func:`create_engine`, :mod:`service.engines.selection`).
Every engine runs the graph form it is best
at: with a calibrated model (``quantization.json``), DeepSparse runs the ``integer`` int8 graph and ONNX
Runtime the int8 form measured fastest for it (:mod:`train.quantize`). When DeepSparse is asked for and is
missing or fails to compile, the service falls back to ONNX Runtime with one logged warning.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from service.engines.base import Engine, EngineError
from service.onnx_export import ExportError, onnx_for, onnx_path_for
from service.sources import ModelSource

logger = logging.getLogger(__name__)

ENGINES = ("deepsparse", "onnxruntime", "torch")
#: Values of the ``quantization`` setting: ``auto`` (the model's calibrated choice per engine), ``none``
#: (float32 graphs), or one int8 form for every engine.
QUANTIZATION_CHOICES = ("auto", "none", "qdq", "integer", "dynamic")

__all__ = ["ENGINES", "Engine", "EngineError", "create_engine", "int8_mode"]

_DISPLAY = {"deepsparse": "DeepSparse", "onnxruntime": "ONNX Runtime", "torch": "the torch engine"}


def int8_mode(kind: str, source: ModelSource, quantization: str = "auto") -> str:
    """The graph form engine ``kind`` runs for ``source``: ``none`` (float32) or an int8 form.

    ``auto`` takes the model's ``quantization.json`` choice for that engine (float32 without one); the torch
    engine always runs float32 weights.
    """
    if quantization not in QUANTIZATION_CHOICES:
        raise EngineError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATION_CHOICES)}")
    if kind == "torch" or quantization == "none":
        return "none"
    if quantization != "auto":
        return quantization
    spec = source.quantization()
    return spec.mode_for(kind) if spec is not None else "none"


def _build(kind: str, source: ModelSource, *, cache_dir: Path, batch_size: int, max_length: int,
           num_threads: int | None, task: str, quantization: str, compile: str = "lazy") -> Engine:
    if kind == "torch":
        from service.engines.torch import TorchEngine

        if not source.has_torch_weights:
            raise EngineError(f"{source.path} has no torch weights for the torch engine")
        return TorchEngine(source.path, num_threads=num_threads, task=task)
    mode = int8_mode(kind, source, quantization)
    try:
        onnx_path = onnx_for(source, cache_dir, task, int8=mode)
    except ExportError as exc:
        raise EngineError(str(exc)) from exc
    if kind == "onnxruntime":
        from service.engines.onnxruntime import OnnxRuntimeEngine

        engine: Engine = OnnxRuntimeEngine(onnx_path, num_threads=num_threads)
    elif kind == "deepsparse":
        from service.engines.deepsparse import DeepSparseEngine

        key = source.fingerprint() if source.has_torch_weights else onnx_path.parent.name
        work_dir = Path(cache_dir) / "deepsparse" / key / onnx_path.stem
        engine = DeepSparseEngine(onnx_path, work_dir=work_dir, batch_size=batch_size, max_length=max_length,
                                  num_threads=num_threads, compile=compile)
    else:
        raise AssertionError(kind)
    engine.int8 = mode
    return engine


#: Sequence lengths ``auto`` times the engines on: a spread over where (premise, hypothesis) pairs and short
#: documents fall, so a static-shape engine pays its bucket padding as it would in service. With one 64-token
#: batch, ``auto`` picked DeepSparse for an AG News student that then ran at 70% of ONNX Runtime's rate.
TIMING_SEQ_LENS = (24, 48, 72, 96, 128)


def measure_rate(engine: Engine, *, batch_size: int, seq_lens: tuple[int, ...] = TIMING_SEQ_LENS, repeats: int = 2,
                 seed: int = 0) -> float:
    """Rows per second of ``engine`` over synthetic ``(batch_size, seq_len)`` batches, one for each of
    ``seq_lens``: total rows over total time of the best of ``repeats`` calls per length, after one warm-up call
    per length (which also compiles a static-shape engine's bucket if it is not compiled yet)."""
    rng = np.random.default_rng(seed)
    seconds = 0.0
    for seq_len in seq_lens:
        inputs = {"input_ids": rng.integers(1000, 20000, (batch_size, seq_len), dtype=np.int64),
                  "attention_mask": np.ones((batch_size, seq_len), dtype=np.int64),
                  "token_type_ids": np.zeros((batch_size, seq_len), dtype=np.int64)}
        feed = {k: v for k, v in inputs.items() if k in engine.input_names}
        engine(feed)
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            engine(feed)
            best = min(best, time.perf_counter() - began)
        seconds += best
    return batch_size * len(seq_lens) / seconds


def create_engine(kind: str, source: ModelSource, *, cache_dir: Path, batch_size: int, max_length: int,
                  num_threads: int | None = None, task: str = "sequence-classification",
                  quantization: str = "auto", compile: str = "lazy", remeasure: bool = False) -> Engine:
    """Build the engine ``kind`` (``auto`` or one of :data:`ENGINES`) for a resolved model.

    ``task`` is what the graph computes (:data:`service.onnx_export.TASKS`): NLI logits, or pooled
    sentence embeddings for the embedding method. ``quantization`` picks the graph form
    (:data:`QUANTIZATION_CHOICES`, see :func:`int8_mode`); ``compile`` is DeepSparse's bucket compilation policy
    (``lazy``, ``startup``, ``background``: :mod:`service.engines.deepsparse`), applied once the engine is chosen.

    ``auto`` takes the engine measured fastest for this machine, engine versions, graphs, threads and batch shape
    (:mod:`service.engines.selection`): a stored measurement of that key when there is one and ``remeasure`` is
    false, else a new one, timed in a child process on the same batches for DeepSparse and ONNX Runtime; only the
    winner is built in this process (the torch engine only when neither runs). The rates, whether they were
    ``measured`` now or ``reused``, and when (``measured_at``, ISO 8601 UTC) are in ``engine.selection`` and in
    :meth:`~service.engines.base.Engine.describe`. ``deepsparse`` falls back to ONNX Runtime with a warning.

    Raises:
        EngineError: the engine (and every fallback) could not be built.
    """
    options = dict(cache_dir=cache_dir, batch_size=batch_size, max_length=max_length, num_threads=num_threads,
                   task=task, quantization=quantization, compile="lazy" if compile == "background" else compile)
    engine = _measured_choice(source, options, remeasure=remeasure) if kind == "auto" else _named(kind, source, options)
    if compile == "background" and hasattr(engine, "start_background_compile"):
        engine.start_background_compile()  # after auto's timing runs, which it would otherwise slow down
    return engine


def _named(kind: str, source: ModelSource, options: dict) -> Engine:
    if kind == "deepsparse":
        order: tuple[str, ...] = ("deepsparse", "onnxruntime")
    elif kind in ENGINES:
        order = (kind,)
    else:
        raise EngineError(f"unknown engine {kind!r}; choose one of auto, {', '.join(ENGINES)}")
    errors = []
    for position, name in enumerate(order):
        try:
            return _build(name, source, **options)
        except EngineError as exc:
            errors.append(f"{name}: {exc}")
            if position + 1 < len(order):
                logger.warning("%s unavailable (%s); falling back to %s", _DISPLAY[name], exc,
                               _DISPLAY[order[position + 1]])
    raise EngineError("no engine could run the model: " + "; ".join(errors))


def _measured_choice(source: ModelSource, options: dict, *, remeasure: bool = False) -> Engine:
    """``auto``: the candidate measured fastest for this key, from the stored measurement or a new one timed in a
    child process (:mod:`service.engines.selection`); only the winner is built here."""
    from service.engines import selection

    rows = min(options["batch_size"], 32)
    widths = tuple(w for w in TIMING_SEQ_LENS if w <= options["max_length"]) or (options["max_length"],)
    versions = selection.engine_versions()
    candidates = tuple(kind for kind in selection.CANDIDATES if versions[kind] is not None)
    if len(candidates) < 2:
        missing = [k for k in selection.CANDIDATES if k not in candidates]
        logger.info("auto: %s not installed; nothing to measure", " and ".join(missing))
        return _unmeasured(candidates, source, options, reason=f"{', '.join(missing)} not installed")

    def current_key() -> dict:
        modes, graphs = {}, {}
        for kind in candidates:
            try:
                modes[kind] = int8_mode(kind, source, options["quantization"])
                graphs[kind] = onnx_path_for(source, options["cache_dir"], options["task"], int8=modes[kind])
            except (EngineError, ExportError, ValueError):  # the timing run reports why
                modes.setdefault(kind, "none")
                graphs[kind] = None
        return selection.selection_key(graphs, modes, task=options["task"], threads=options["num_threads"],
                                       batch_rows=rows, seq_lens=widths)

    key = current_key()
    record = None if remeasure else selection.load_record(options["cache_dir"], key)
    if record is not None:
        measurement = "reused"
    else:
        result = selection.measure_in_child(source, options, candidates, batch_rows=rows, seq_lens=widths)
        for name, error in result["errors"].items():
            logger.warning("auto: %s unavailable (%s)", _DISPLAY[name], error)
        if not result["rows_per_s"]:
            return _unmeasured(("torch",), source, options, reason="no candidate ran: " + "; ".join(
                f"{k}: {v}" for k, v in result["errors"].items()))
        record = {"chosen": max(result["rows_per_s"], key=result["rows_per_s"].get), **result,
                  "batch_rows": rows, "seq_lens": list(widths), "measured_at": selection.now_iso()}
        key = current_key()  # the graphs exist now (the child built them): the key the next start computes
        selection.save_record(options["cache_dir"], key, record)
        measurement = "measured"
    rates = record["rows_per_s"]
    engine = None
    for name in sorted(rates, key=rates.get, reverse=True):  # the winner; the runner-up if it fails to build now
        try:
            engine = _build(name, source, **options)
            break
        except EngineError as exc:
            logger.warning("auto: %s, measured fastest, failed to build (%s)", _DISPLAY[name], exc)
    if engine is None:
        raise EngineError("auto: no measured engine could be built")
    engine.selection = {"chosen": engine.name, "rows_per_s": rates, "batch_rows": record["batch_rows"],
                        "seq_lens": record["seq_lens"], "int8": record["int8"], "errors": record.get("errors", {}),
                        "measurement": measurement, "measured_at": record["measured_at"],
                        "measure_seconds": record.get("measure_seconds"), "remeasure_forced": remeasure,
                        "key": selection.key_digest(key),
                        "record": str(selection.record_path(options["cache_dir"], key))}
    logger.info("auto engine for %s: %s (%s %s; rows/s on %d-row batches of %s tokens: %s)", source.model_id,
                engine.name, "measured" if measurement == "measured" else "reusing the measurement of",
                record["measured_at"], record["batch_rows"], "/".join(map(str, record["seq_lens"])),
                ", ".join(f"{k} {v}" for k, v in rates.items()))
    return engine


def _unmeasured(order: tuple[str, ...], source: ModelSource, options: dict, *, reason: str) -> Engine:
    """``auto`` with nothing to compare: the first of ``order`` (then torch) that builds."""
    errors = []
    for name in dict.fromkeys((*order, "torch")):
        try:
            engine = _build(name, source, **options)
        except EngineError as exc:
            errors.append(f"{name}: {exc}")
            continue
        engine.selection = {"chosen": name, "rows_per_s": {}, "measurement": "none", "reason": reason}
        return engine
    raise EngineError("no engine could run the model: " + "; ".join([reason, *errors]))
