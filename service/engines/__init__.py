"""Engines behind one interface (:class:`~service.engines.base.Engine`), and how one is chosen.

``auto`` tries DeepSparse first for sparse or int8 graphs and ONNX Runtime first for dense ones
(:func:`auto_order`), then the rest. When DeepSparse is asked for (or tried by ``auto``) and is
missing or fails to compile, the service falls back to ONNX Runtime with one logged warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.engines.base import Engine, EngineError
from service.onnx_export import ExportError, inspect_onnx, onnx_for
from service.sources import ModelSource

logger = logging.getLogger(__name__)

ENGINES = ("deepsparse", "onnxruntime", "torch")

__all__ = ["ENGINES", "Engine", "EngineError", "create_engine"]


def _build(kind: str, source: ModelSource, *, cache_dir: Path, batch_size: int, max_length: int,
           num_threads: int | None, task: str) -> Engine:
    if kind == "torch":
        from service.engines.torch import TorchEngine

        if not source.has_torch_weights:
            raise EngineError(f"{source.path} has no torch weights for the torch engine")
        return TorchEngine(source.path, num_threads=num_threads, task=task)
    try:
        onnx_path = onnx_for(source, cache_dir, task)
    except ExportError as exc:
        raise EngineError(str(exc)) from exc
    if kind == "onnxruntime":
        from service.engines.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(onnx_path, num_threads=num_threads)
    if kind == "deepsparse":
        from service.engines.deepsparse import DeepSparseEngine

        key = source.fingerprint() if source.has_torch_weights else onnx_path.parent.name
        work_dir = Path(cache_dir) / "deepsparse" / key / onnx_path.stem
        return DeepSparseEngine(onnx_path, work_dir=work_dir, batch_size=batch_size, max_length=max_length,
                                num_threads=num_threads)
    raise AssertionError(kind)


_DISPLAY = {"deepsparse": "DeepSparse", "onnxruntime": "ONNX Runtime", "torch": "the torch engine"}


def auto_order(source: ModelSource, cache_dir: Path, task: str = "sequence-classification") -> tuple[str, ...]:
    """Engines to try for ``auto``: DeepSparse first only for sparse (>= 50% zeros) or int8 graphs.

    DeepSparse's speed comes from sparsity and quantization; on a dense float32 graph it has
    nothing to exploit. Measured on this project's 2-core AVX2 machine (no VNNI) with the dense
    default teacher, 512 AG News texts x 4 labels, batch 64 (``python -m train.evaluate --dataset
    ag_news --template 'This text is about {}.' --limit 512 --engine <name>``): ONNX Runtime 18.2
    texts/s, DeepSparse 10.0 (static-shape buckets, compilation included), torch 14.3.
    """
    try:
        facts = inspect_onnx(onnx_for(source, cache_dir, task))
    except Exception:  # no graph to inspect: the engines will say why when built
        return ENGINES
    if facts["sparsity"] >= 0.5 or facts["quantization"] != "none":
        return ENGINES
    return ("onnxruntime", "deepsparse", "torch")


def create_engine(kind: str, source: ModelSource, *, cache_dir: Path, batch_size: int, max_length: int,
                  num_threads: int | None = None, task: str = "sequence-classification") -> Engine:
    """Build the engine ``kind`` (``auto`` or one of :data:`ENGINES`) for a resolved model.

    ``task`` is what the graph computes (:data:`service.onnx_export.TASKS`): NLI logits, or pooled
    sentence embeddings for the embedding method.

    ``deepsparse`` falls back to ONNX Runtime; ``auto`` tries :func:`auto_order`'s engines in
    turn. Each fallback logs one warning with the reason.

    Raises:
        EngineError: the engine (and every fallback) could not be built.
    """
    if kind == "deepsparse":
        order: tuple[str, ...] = ("deepsparse", "onnxruntime")
    elif kind == "auto":
        order = auto_order(source, cache_dir, task)
    elif kind in ENGINES:
        order = (kind,)
    else:
        raise EngineError(f"unknown engine {kind!r}; choose one of auto, {', '.join(ENGINES)}")
    options = dict(cache_dir=cache_dir, batch_size=batch_size, max_length=max_length, num_threads=num_threads, task=task)
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
