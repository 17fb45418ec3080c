"""Engines behind one interface (:class:`~service.engines.base.Engine`), and how one is chosen.

``auto`` prefers DeepSparse, then ONNX Runtime, then the PyTorch reference. When DeepSparse is
asked for (or tried by ``auto``) and is missing or fails to compile, the service falls back to ONNX
Runtime with one logged warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.engines.base import Engine, EngineError
from service.onnx_export import ExportError, onnx_for
from service.sources import ModelSource

logger = logging.getLogger(__name__)

ENGINES = ("deepsparse", "onnxruntime", "torch")

__all__ = ["ENGINES", "Engine", "EngineError", "create_engine"]


def _build(kind: str, source: ModelSource, *, cache_dir: Path, batch_size: int, max_length: int,
           num_threads: int | None) -> Engine:
    if kind == "torch":
        from service.engines.torch import TorchEngine

        if not source.has_torch_weights:
            raise EngineError(f"{source.path} has no torch weights for the torch engine")
        return TorchEngine(source.path, num_threads=num_threads)
    try:
        onnx_path = onnx_for(source, cache_dir)
    except ExportError as exc:
        raise EngineError(str(exc)) from exc
    if kind == "onnxruntime":
        from service.engines.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(onnx_path, num_threads=num_threads)
    if kind == "deepsparse":
        from service.engines.deepsparse import DeepSparseEngine

        work_dir = Path(cache_dir) / "deepsparse" / (source.fingerprint() if source.has_torch_weights else onnx_path.parent.name)
        return DeepSparseEngine(onnx_path, work_dir=work_dir, batch_size=batch_size, max_length=max_length,
                                num_threads=num_threads)
    raise EngineError(f"unknown engine {kind!r}; choose one of auto, {', '.join(ENGINES)}")


def create_engine(kind: str, source: ModelSource, *, cache_dir: Path, batch_size: int, max_length: int,
                  num_threads: int | None = None) -> Engine:
    """Build the engine ``kind`` (``auto`` or one of :data:`ENGINES`) for a resolved model.

    Raises:
        EngineError: the engine (and, for deepsparse/auto, every fallback) could not be built.
    """
    options = dict(cache_dir=cache_dir, batch_size=batch_size, max_length=max_length, num_threads=num_threads)
    if kind in ("auto", "deepsparse"):
        try:
            return _build("deepsparse", source, **options)
        except EngineError as exc:
            logger.warning("DeepSparse unavailable (%s); falling back to ONNX Runtime", exc)
        try:
            return _build("onnxruntime", source, **options)
        except EngineError:
            if kind == "deepsparse":
                raise
            logger.warning("ONNX Runtime unavailable; falling back to the torch engine", exc_info=True)
        return _build("torch", source, **options)
    return _build(kind, source, **options)
