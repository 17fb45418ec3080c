"""Engines behind one interface (:class:`~service.engines.base.Engine`), and how one is chosen.

``auto`` counts cost, then speed: in a child process it builds each available engine (ONNX Runtime and
DeepSparse; the torch reference engine only when neither can run the model), measures what each would cost a
warm start (seconds to build, resident memory; for DeepSparse every (batch, sequence) bucket it compiles), keeps
those that fit the start-up and memory :class:`~service.engines.selection.Budget` (``ZSC_MAX_START_S``,
``ZSC_MAX_RSS_MB``), and, when more than one fits, times them on the same batches (:func:`timing_shapes`) and takes
the fastest. The measurement is remembered in the cache directory under a key of what decides it, and only the
chosen engine is built in the serving process (:func:`create_engine`, :mod:`service.engines.selection`).
Every engine runs the graph form it is best at: with a calibrated model (``quantization.json``), DeepSparse runs
the ``integer`` int8 graph and ONNX Runtime the int8 form measured fastest for it (:mod:`train.quantize`). When
DeepSparse is asked for and is missing or fails to compile, the service falls back to ONNX Runtime with one logged
warning. Whatever serves, the log and ``GET /info`` say which engine, why, and under which licence; DeepSparse's
(evaluation and non-production use only) is named in one warning line.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from service.engines.base import Budget, Engine, EngineError
from service.onnx_export import ExportError, onnx_for, onnx_path_for
from service.sources import ModelSource

logger = logging.getLogger(__name__)

ENGINES = ("deepsparse", "onnxruntime", "torch")
#: Values of the ``quantization`` setting: ``auto`` (the model's calibrated choice per engine), ``none``
#: (float32 graphs), or one int8 form for every engine.
QUANTIZATION_CHOICES = ("auto", "none", "qdq", "integer", "dynamic")

__all__ = ["ENGINES", "Budget", "Engine", "EngineError", "create_engine", "int8_mode"]

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
           num_threads: int | None, task: str, quantization: str, compile: str = "lazy",
           ort_arena: str = "on") -> Engine:
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

        engine: Engine = OnnxRuntimeEngine(onnx_path, num_threads=num_threads, arena=ort_arena)
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


#: The batches ``auto`` times, as ``(fraction of the batch's rows, tokens)``: full batches over the lengths where
#: (premise, hypothesis) pairs and short documents fall, and the part-filled batches real requests end with
#: (8 texts x 6 labels = 48 pairs: a batch of 32 and one of 16). A static-shape engine pays its padding, of rows
#: and of columns, as it does in service: with full batches only, ``auto`` picked DeepSparse on a VNNI CPU where the
#: speed benchmark on AG News and emotion texts measured it at 0.88x / 0.77x ONNX Runtime (issue 23); with one
#: 64-token batch, it picked DeepSparse for an AG News student that then ran at 70% of ONNX Runtime's rate.
TIMING_MIX = ((1.0, 24), (0.5, 24), (1.0, 40), (0.5, 40), (1.0, 56), (0.25, 56), (1.0, 72), (0.5, 96), (1.0, 128))


def timing_shapes(batch_size: int, max_length: int) -> tuple[tuple[int, int], ...]:
    """``auto``'s timing batches ``(rows, tokens)`` for a service of ``batch_size`` rows (at most 32 timed) and
    ``max_length`` tokens (longer mix entries are cut to it): :data:`TIMING_MIX`."""
    rows = min(batch_size, 32)
    return tuple(dict.fromkeys((max(1, round(f * rows)), min(t, max_length)) for f, t in TIMING_MIX))


def measure_rate(engine: Engine, *, shapes: tuple[tuple[int, int], ...], repeats: int = 2, seed: int = 0) -> float:
    """Rows per second of ``engine`` over synthetic batches of ``shapes`` (``(rows, tokens)``): total rows over
    total time of the best of ``repeats`` calls per shape, after one warm-up call per shape (which also compiles a
    static-shape engine's bucket if it is not compiled yet)."""
    rng = np.random.default_rng(seed)
    seconds, rows_total = 0.0, 0
    for rows, seq_len in shapes:
        inputs = {"input_ids": rng.integers(1000, 20000, (rows, seq_len), dtype=np.int64),
                  "attention_mask": np.ones((rows, seq_len), dtype=np.int64),
                  "token_type_ids": np.zeros((rows, seq_len), dtype=np.int64)}
        feed = {k: v for k, v in inputs.items() if k in engine.input_names}
        engine(feed)
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            engine(feed)
            best = min(best, time.perf_counter() - began)
        seconds += best
        rows_total += rows
    return rows_total / seconds


def create_engine(kind: str, source: ModelSource, *, cache_dir: Path, batch_size: int, max_length: int,
                  num_threads: int | None = None, task: str = "sequence-classification",
                  quantization: str = "auto", compile: str = "lazy", remeasure: bool = False,
                  budget: Budget | None = None, ort_arena: str = "on") -> Engine:
    """Build the engine ``kind`` (``auto`` or one of :data:`ENGINES`) for a resolved model.

    ``task`` is what the graph computes (:data:`service.onnx_export.TASKS`): NLI logits, or pooled
    sentence embeddings for the embedding method. ``quantization`` picks the graph form
    (:data:`QUANTIZATION_CHOICES`, see :func:`int8_mode`); ``compile`` is DeepSparse's bucket compilation policy
    (``lazy``, ``startup``, ``background``: :mod:`service.engines.deepsparse`), applied once the engine is chosen;
    ``ort_arena`` ONNX Runtime's memory arena policy (:class:`~service.engines.onnxruntime.OnnxRuntimeEngine`).

    ``auto`` takes the fastest engine whose measured cost fits ``budget`` (``None``: unbounded, speed alone) for
    this machine, engine versions, graphs, threads and batch shapes (:mod:`service.engines.selection`): from a
    stored measurement of that key when there is one and ``remeasure`` is false, else a new one, measured in a
    child process; only the chosen engine is built in this process (the torch engine only when neither runs).
    The costs, rates, budget, whether they were ``measured`` now or ``reused``, and when (``measured_at``, ISO 8601
    UTC) are in ``engine.selection``; why it serves is ``engine.why``; both are in
    :meth:`~service.engines.base.Engine.describe`. ``deepsparse`` falls back to ONNX Runtime with a warning.

    Raises:
        EngineError: the engine (and every fallback) could not be built.
    """
    options = dict(cache_dir=cache_dir, batch_size=batch_size, max_length=max_length, num_threads=num_threads,
                   task=task, quantization=quantization, compile="lazy" if compile == "background" else compile,
                   ort_arena=ort_arena)
    if kind == "auto":
        engine = _measured_choice(source, options, remeasure=remeasure, budget=budget or Budget(), compile=compile)
    else:
        engine = _named(kind, source, options)
    _announce(engine, source)
    if compile == "background" and hasattr(engine, "start_background_compile"):
        engine.start_background_compile()  # after auto's timing runs, which it would otherwise slow down
    return engine


_LICENCE_WARNED: set[str] = set()


def _announce(engine: Engine, source: ModelSource) -> None:
    """The start-up log: which engine serves the model, why, under which licence; one warning per process when
    DeepSparse serves (its licence allows evaluation and non-production use only)."""
    from service.engines.base import licence

    logger.info("engine for %s: %s, %s; licence: %s", source.model_id, _DISPLAY[engine.name], engine.why,
                licence(engine.name))
    if engine.name == "deepsparse" and "deepsparse" not in _LICENCE_WARNED:
        _LICENCE_WARNED.add("deepsparse")
        logger.warning("DeepSparse serves under the %s; for production set ZSC_ENGINE=onnxruntime (or hold a "
                       "Neural Magic enterprise licence)", licence("deepsparse"))


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
            engine = _build(name, source, **options)
            engine.why = (f"named by the engine setting ({kind})" if name == kind else
                          f"fallback: {_DISPLAY[kind]} unavailable ({errors[-1]})")
            return engine
        except EngineError as exc:
            errors.append(f"{name}: {exc}")
            if position + 1 < len(order):
                logger.warning("%s unavailable (%s); falling back to %s", _DISPLAY[name], exc,
                               _DISPLAY[order[position + 1]])
    raise EngineError("no engine could run the model: " + "; ".join(errors))


def _measured_choice(source: ModelSource, options: dict, *, remeasure: bool = False, budget: Budget = Budget(),
                     compile: str = "startup") -> Engine:
    """``auto``: the fastest candidate whose cost fits ``budget``, from the stored measurement or a new one made in
    a child process (:mod:`service.engines.selection`); only the chosen engine is built here."""
    from service.engines import selection
    from service.engines.deepsparse import batch_buckets, seq_buckets

    shapes = timing_shapes(options["batch_size"], options["max_length"])
    versions = selection.engine_versions()
    candidates = tuple(kind for kind in selection.CANDIDATES if versions[kind] is not None)
    if len(candidates) < 2:
        missing = [k for k in selection.CANDIDATES if k not in candidates]
        logger.info("auto: %s not installed; nothing to measure", " and ".join(missing))
        return _unmeasured(candidates, source, options, reason=f"{', '.join(missing)} not installed")
    buckets = len(seq_buckets(options["max_length"])) * len(batch_buckets(options["batch_size"]))

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
                                       shapes=shapes, compile=compile, buckets=buckets)

    key = current_key()
    record = None if remeasure else selection.load_record(options["cache_dir"], key)
    chosen, why, stale = selection.choose(record, budget) if record is not None else (None, "", True)
    if record is not None and not stale:
        measurement = "reused"
    else:
        if record is not None:
            logger.info("auto: the stored measurement did not time every engine that fits this budget; measuring")
        result = selection.measure_in_child(source, options, candidates, shapes=shapes, budget=budget,
                                            compile=compile)
        for name, error in result["errors"].items():
            logger.warning("auto: %s unavailable (%s)", _DISPLAY[name], error)
        record = {**result, "shapes": [list(x) for x in shapes], "measured_at": selection.now_iso()}
        chosen, why, _ = selection.choose(record, budget)
        if chosen is None:
            return _unmeasured(("torch",), source, options, reason="no candidate ran: " + "; ".join(
                f"{k}: {v}" for k, v in result["errors"].items()))
        key = current_key()  # the graphs exist now (the child built them): the key the next start computes
        selection.save_record(options["cache_dir"], key, record)
        measurement = "measured"
    costs, rates = record["costs"], record.get("rows_per_s", {})
    order = [chosen] + sorted((k for k in costs if k != chosen), key=lambda k: costs[k]["projected_rss_mb"])
    engine = None
    for name in order:  # the choice; the cheapest other if it fails to build now
        try:
            engine = _build(name, source, **options)
            if name != chosen:
                why = f"{_DISPLAY[chosen]}, chosen, failed to build; the next cheapest"
            break
        except EngineError as exc:
            logger.warning("auto: %s, chosen, failed to build (%s)", _DISPLAY[name], exc)
    if engine is None:
        raise EngineError("auto: no measured engine could be built")
    engine.why = f"auto: {why}"
    engine.selection = {"chosen": engine.name, "why": why, "budget": budget.describe(), "costs": costs,
                        "rows_per_s": rates, "shapes": record["shapes"], "int8": record["int8"],
                        "errors": record.get("errors", {}), "measurement": measurement,
                        "measured_at": record["measured_at"], "measure_seconds": record.get("measure_seconds"),
                        "remeasure_forced": remeasure, "key": selection.key_digest(key),
                        "record": str(selection.record_path(options["cache_dir"], key))}
    logger.info("auto engine for %s: %s (%s %s; %s)", source.model_id, engine.name,
                "measured" if measurement == "measured" else "reusing the measurement of", record["measured_at"], why)
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
        engine.why = f"auto: the only engine that could be built ({reason})"
        return engine
    raise EngineError("no engine could run the model: " + "; ".join([reason, *errors]))
