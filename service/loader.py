"""Loading a model for serving: resolve the source, build the engine, wrap it in the zero-shot core."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from service.config import Settings
from service.engines import Engine, create_engine
from service.sources import ModelSource, resolve_model
from service.zeroshot import ZeroShotClassifier

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to serve, with the facts ``GET /info`` reports."""

    source: ModelSource
    engine: Engine
    classifier: ZeroShotClassifier
    info: dict = field(default_factory=dict)

    def close(self) -> None:
        self.engine.close()


def load_model(settings: Settings) -> LoadedModel:
    """Resolve ``settings.model``, build ``settings.engine`` (with fallbacks) and the classifier.

    Raises:
        service.sources.ModelSourceError: the model cannot be found.
        service.engines.EngineError: no engine could run it.
        ValueError: the model is not an NLI model (no entailment label).
    """
    from transformers import AutoTokenizer

    started = time.perf_counter()
    source = resolve_model(settings.model, revision=settings.revision)
    config = source.config()
    tokenizer = AutoTokenizer.from_pretrained(source.path, use_fast=True)
    max_length = settings.max_length or min(tokenizer.model_max_length, config.get("max_position_embeddings", 512))
    engine = create_engine(settings.engine, source, cache_dir=settings.cache_dir, batch_size=settings.batch_size,
                           max_length=max_length, num_threads=settings.num_threads)
    label2id = {str(k): int(v) for k, v in config.get("label2id", {}).items()}
    classifier = ZeroShotClassifier(tokenizer, engine, label2id, max_length=max_length, batch_size=settings.batch_size)
    info = {
        "model_id": source.model_id,
        "model_path": str(source.path),
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "max_length": max_length,
        "batch_size": settings.batch_size,
        "label2id": label2id,
        "entailment_id": classifier.entailment_id,
        "contradiction_id": classifier.contradiction_id,
        **_weights_facts(engine, source),
        **engine.describe(),
        "load_seconds": round(time.perf_counter() - started, 3),
    }
    logger.info("loaded %s on %s in %.1f s", source.model_id, engine.name, info["load_seconds"])
    return LoadedModel(source=source, engine=engine, classifier=classifier, info=info)


def _weights_facts(engine: Engine, source: ModelSource) -> dict:
    """Sparsity and quantization of what the engine runs (ONNX initializers, or torch weights)."""
    onnx_path = getattr(engine, "onnx_path", None)
    if onnx_path is not None:
        try:
            from service.onnx_export import inspect_onnx

            return inspect_onnx(onnx_path)
        except ImportError:
            return {"sparsity": None, "quantization": None}
    import torch

    model = getattr(engine, "model", None)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)] if model is not None else []
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return {"sparsity": round(zeros / total, 4) if total else 0.0, "quantization": "none", "weight_params": total}
