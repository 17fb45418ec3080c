"""Loading models for serving: resolve the sources, build the engines, wrap them in zero-shot methods.

Two model roles: the NLI cross-encoder (``settings.model``, the ``nli`` method) and the sentence
encoder (``settings.embedding_model``, the ``embedding`` method); with both, the ``ensemble`` method
combines them. Each method's calibration is looked up by the models' content fingerprints
(:mod:`service.calibration`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from service.batching import MicroBatcher, engine_token_cap
from service.calibration import IDENTITY, Calibration, calibration_key, find_calibration
from service.config import NO_MODEL, Settings
from service.embedding import EmbeddingClassifier, SentenceEncoder
from service.engines import Engine, create_engine
from service.engines.selection import service_budget
from service.ensemble import EnsembleClassifier
from service.sources import DEFAULT_MODEL, PACKAGED_MINILM, ModelSource, resolve_model
from service.zeroshot import ZeroShotClassifier, ZeroShotMethod

logger = logging.getLogger(__name__)

Role = Literal["nli", "embedding"]
#: What ``embedding_model="default"`` means: the PyPI-packaged all-MiniLM-L6-v2.
DEFAULT_EMBEDDING_MODEL = PACKAGED_MINILM


@dataclass
class LoadedModel:
    """A model ready to serve, with the facts ``GET /info`` reports.

    ``classifier`` is the model's own method: :class:`~service.zeroshot.ZeroShotClassifier` for the
    NLI role, :class:`~service.embedding.EmbeddingClassifier` for the embedding role.
    """

    role: Role
    source: ModelSource
    engine: Engine
    classifier: ZeroShotMethod
    info: dict = field(default_factory=dict)

    @property
    def runner(self):
        """The :class:`~service.batching.SequenceRunner` (or micro-batcher) in front of the engine."""
        return self.classifier.runner if self.role == "nli" else self.classifier.encoder.runner  # type: ignore[attr-defined]

    def close(self) -> None:
        self.runner.close()
        self.engine.close()


def _transferred_dir(settings: Settings) -> Path:
    """Where calibrations the service fits itself are kept: ``<cache_dir>/calibrations``."""
    from service.sources import default_cache_dir

    return Path(settings.cache_dir or default_cache_dir()) / "calibrations"


def _calibration(settings: Settings, method: str, *fingerprints: str) -> tuple[Calibration, dict]:
    """The stored calibration of ``method`` for these models, or the identity (with the reason in the info)."""
    key = calibration_key(method, *fingerprints)
    if not settings.calibrate:
        return IDENTITY, {"calibration": None, "calibration_note": "disabled (ZSC_CALIBRATE=false): raw scores"}
    found = find_calibration(key, settings.calibration_dir)
    if found is None and method == "embedding":
        found = find_calibration(key, _transferred_dir(settings))
    if found is None:
        logger.warning("no calibration %s.json for the %s method: scores are uncalibrated "
                       "(fit one with python -m train.calibrate)", key, method)
        return IDENTITY, {"calibration": None, "calibration_note": f"no {key}.json: uncalibrated"}
    calibration, path = found
    return calibration, {"calibration": {"file": str(path), "temperature": calibration.temperature,
                                         "binary_scale": calibration.binary_scale,
                                         "binary_bias": calibration.binary_bias,
                                         **({"weight": calibration.weight} if method == "ensemble" else {})}}


def _transferred_calibration(settings: Settings, classifier: EmbeddingClassifier, fingerprint: str
                             ) -> tuple[Calibration, dict]:
    """A calibration for a sentence encoder that ships none, fitted here with no gold label and kept in
    ``<cache_dir>/calibrations`` (so it is fitted once per encoder): the packaged encoder's calibrated probabilities
    on the shipped reference tasks (``service/models/calibrations/reference_tasks.json``) are the targets; the new
    encoder's single-label temperature minimises the KL divergence to them
    (:func:`service.calibration.transfer_temperature`), and its multi-label ``sigmoid(scale * cos + bias)`` the
    binary cross-entropy to the packaged encoder's multi-label probabilities. Returns the identity (with the reason)
    when the packaged encoder cannot be loaded."""
    import importlib.resources

    from scipy.optimize import minimize

    from service.calibration import sigmoid, transfer_temperature

    key = calibration_key("embedding", fingerprint)
    reference = json.loads(importlib.resources.files("service").joinpath(
        "models/calibrations/reference_tasks.json").read_text(encoding="utf-8"))
    try:
        packaged = load_model(Settings(model=NO_MODEL, embedding_model=DEFAULT_EMBEDDING_MODEL, method="embedding",
                                       engine="onnxruntime", cache_dir=settings.cache_dir,
                                       quantization=settings.quantization), role="embedding", embedded=True)
    except Exception as exc:  # the packaged encoder missing: nothing to transfer from
        logger.warning("no calibration for %s and none could be transferred (%s): scores are uncalibrated", key, exc)
        return IDENTITY, {"calibration": None, "calibration_note": f"no {key}.json and no packaged encoder to "
                                                                   f"transfer from: uncalibrated"}
    try:
        targets, raws, binary_targets = [], [], []
        for task in reference["tasks"]:
            options = dict(hypothesis_template=task["template"])
            targets.append(packaged.classifier.scores(reference["texts"], task["labels"], **options))
            binary_targets.append(packaged.classifier.scores(reference["texts"], task["labels"], multi_label=True,
                                                             **options))
            raws.append(classifier.raw(reference["texts"], task["labels"], **options))
    finally:
        packaged.close()
    temperature = transfer_temperature(targets, raws)
    cos, target = np.concatenate([r.ravel() for r in raws]), np.concatenate([t.ravel() for t in binary_targets])

    def bce(params: np.ndarray) -> float:
        q = np.clip(sigmoid(params[0] * cos + params[1]), 1e-9, 1 - 1e-9)
        return float(-(target * np.log(q) + (1 - target) * np.log(1 - q)).mean())

    scale, bias = minimize(bce, np.array([1.0, 0.0]), method="Nelder-Mead").x
    calibration = Calibration(temperature=temperature, binary_scale=float(scale), binary_bias=float(bias),
                              fitted_on={"transferred_from": DEFAULT_EMBEDDING_MODEL,
                                         "reference": reference["source"], "tasks": len(reference["tasks"]),
                                         "texts": len(reference["texts"])})
    path = _transferred_dir(settings) / f"{key}.json"
    from service.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, calibration.to_json(method="embedding"))
    logger.info("calibration %s transferred from %s: temperature %.4f (saved in %s)", key, DEFAULT_EMBEDDING_MODEL,
                temperature, path)
    return calibration, {"calibration": {"file": str(path), "temperature": temperature, "binary_scale": float(scale),
                                         "binary_bias": float(bias), "transferred_from": DEFAULT_EMBEDDING_MODEL}}


def load_model(settings: Settings, role: Role = "nli", models: int = 1, models_left: int = 1,
               embedded: bool = False) -> LoadedModel:
    """Resolve the model of ``role``, build ``settings.engine`` (with fallbacks) and its classifier.

    ``models``, ``models_left``: the models this process loads, and those still to load, this one included;
    ``engine=auto``'s start-up and memory budget (``settings.max_start_s``, ``settings.max_rss_mb``) is shared among
    them (:func:`service.engines.selection.service_budget`; ``embedded``: this process is not the service).

    Raises:
        service.sources.ModelSourceError: the model cannot be found.
        service.engines.EngineError: no engine could run it.
        ValueError: an NLI model without an entailment label, or a sentence encoder whose pooling is
            not supported; ``role``'s model setting is ``none``.
    """
    from transformers import AutoTokenizer

    started = time.perf_counter()
    model_id = settings.model if role == "nli" else settings.embedding_model
    if model_id == NO_MODEL:
        raise ValueError(f"the {role} model is set to {NO_MODEL!r}")
    if role == "embedding" and model_id == DEFAULT_MODEL:
        model_id = DEFAULT_EMBEDDING_MODEL
    source = resolve_model(model_id, revision=settings.revision, cache_dir=settings.cache_dir)
    config = source.config()
    tokenizer = AutoTokenizer.from_pretrained(source.path, use_fast=True)
    model_limit = min(tokenizer.model_max_length, config.get("max_position_embeddings", 512))
    fingerprint = source.fingerprint()
    budget = service_budget(settings.max_start_s, settings.max_rss_mb, models=models, models_left=models_left,
                            embedded=embedded)
    engine_options = dict(cache_dir=settings.cache_dir, batch_size=settings.batch_size,
                          num_threads=settings.num_threads, quantization=settings.quantization,
                          compile=settings.deepsparse_compile, remeasure=settings.remeasure, budget=budget,
                          ort_arena=settings.ort_arena)
    if role == "nli":
        max_length = settings.max_length or model_limit
        engine = create_engine(settings.engine, source, max_length=max_length, **engine_options)
        label2id = {str(k): int(v) for k, v in config.get("label2id", {}).items()}
        calibration, calibration_info = _calibration(settings, "nli", fingerprint)
        classifier: ZeroShotMethod = ZeroShotClassifier(tokenizer, engine, label2id, max_length=max_length,
                                                        batch_size=settings.batch_size, calibration=calibration)
        role_info = {"label2id": label2id, "entailment_id": classifier.entailment_id,
                     "contradiction_id": classifier.contradiction_id}
    else:
        from service.pooling import read_pooling_config

        pooling = read_pooling_config(source.path)
        max_length = settings.embedding_max_length or min(pooling.max_seq_length or model_limit, model_limit)
        engine = create_engine(settings.engine, source, max_length=max_length, task="sentence-embedding",
                               **engine_options)
        calibration, calibration_info = _calibration(settings, "embedding", fingerprint)
        encoder = SentenceEncoder(tokenizer, engine, max_length=max_length, batch_size=settings.batch_size,
                                  pooling=pooling)
        classifier = EmbeddingClassifier(encoder, calibration=calibration, cache_size=settings.label_cache_size)
        if settings.calibrate and calibration.is_identity and source.model_id != DEFAULT_EMBEDDING_MODEL:
            calibration, calibration_info = _transferred_calibration(settings, classifier, fingerprint)
            classifier.calibration = calibration
        role_info = {"pooling": pooling.mode, "normalize": pooling.normalize}
    runner_owner = classifier if role == "nli" else classifier.encoder  # type: ignore[attr-defined]
    runner_owner.runner.max_batch_tokens = engine_token_cap(settings.max_batch_tokens, engine.name)
    if settings.batch_wait_ms > 0:
        plain = runner_owner.runner
        runner_owner.runner = MicroBatcher(engine, batch_size=settings.batch_size, pad_id=plain.pad_id,
                                           postprocess=plain.postprocess, max_wait_ms=settings.batch_wait_ms,
                                           max_queue=settings.max_queue, name=f"micro-batcher-{role}",
                                           max_batch_tokens=engine_token_cap(settings.max_batch_tokens, engine.name))
    info = {
        "model_id": source.model_id,
        "model_path": str(source.path),
        "fingerprint": fingerprint,
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "max_length": max_length,
        "batch_size": settings.batch_size,
        **role_info,
        **calibration_info,
        **_weights_facts(engine, source),
        **engine.describe(),
        "compact_path": str(source.compact_path) if source.compact_path else None,
        "load_seconds": round(time.perf_counter() - started, 3),
    }
    logger.info("loaded %s model %s on %s in %.1f s", role, source.model_id, engine.name, info["load_seconds"])
    return LoadedModel(role=role, source=source, engine=engine, classifier=classifier, info=info)


@dataclass
class ServedMethods:
    """Everything a service process serves: the loaded models and the methods built on them."""

    models: dict[str, LoadedModel]
    methods: dict[str, ZeroShotMethod]
    default_method: str
    ensemble_info: dict = field(default_factory=dict)
    #: Fine-tuned classifiers of ``POST /classify``, by name (:mod:`service.classify`).
    classifiers: dict = field(default_factory=dict)

    def model_id(self, method: str) -> str:
        """The model id(s) behind ``method`` (``nli+embedding`` ids joined by ``+`` for the ensemble)."""
        return "+".join(m.source.model_id for m in self._models_of(method))

    def engine_name(self, method: str) -> str:
        """The engine name(s) behind ``method``, joined by ``+`` for the ensemble."""
        return "+".join(m.engine.name for m in self._models_of(method))

    def _models_of(self, method: str) -> list[LoadedModel]:
        roles = {"nli": ["nli"], "embedding": ["embedding"], "ensemble": ["nli", "embedding"]}[method]
        return [self.models[r] for r in roles]

    def info(self) -> dict:
        """``GET /info``'s description of the methods and models."""
        methods = {name: {"models": [m.role for m in self._models_of(name)]} for name in self.methods}
        if "ensemble" in methods:
            methods["ensemble"].update(self.ensemble_info)
        embedding = self.methods.get("embedding")
        if isinstance(embedding, EmbeddingClassifier):
            methods["embedding"]["label_cache"] = embedding.cache_info()
        return {"default_method": self.default_method, "methods": methods,
                "models": {role: {**m.info, **m.engine.describe(), "batching": m.runner.describe()}
                           for role, m in self.models.items()},
                "classifiers": {name: {**c.info, **c.engine.describe(), "batching": c.runner.describe()}
                                for name, c in self.classifiers.items()}}

    def close(self) -> None:
        for model in self.models.values():
            model.close()
        for classifier in self.classifiers.values():
            classifier.close()


def load_methods(settings: Settings, embedded: bool = False) -> ServedMethods:
    """Load every model the settings name (NLI and/or sentence encoder) and build the methods.

    ``embedded``: the models serve another process's work (the in-process scorer), so ``engine=auto``'s memory
    budget is the service's own share, not what that process leaves (:func:`service.engines.selection.service_budget`).

    Raises:
        the errors of :func:`load_model`; models already loaded are closed first.
    """
    from service.classify import load_classifier, load_head_classifier
    from service.head import is_head_dir

    models: dict[str, LoadedModel] = {}
    classifiers: dict = {}
    try:
        roles = [r for r, m in (("nli", settings.model), ("embedding", settings.embedding_model)) if m != NO_MODEL]
        for position, role in enumerate(roles):
            models[role] = load_model(settings, role, models=len(roles), models_left=len(roles) - position,
                                      embedded=embedded)
        for name, path in settings.classifiers.items():
            if is_head_dir(path):  # an adapted head (annotate refresh): on the loaded sentence encoder
                classifiers[name] = load_head_classifier(name, path, models.get("embedding"))
                continue
            classifiers[name] = load_classifier(name, path, engine=settings.engine, quantization=settings.quantization,
                                                cache_dir=settings.cache_dir, batch_size=settings.batch_size,
                                                num_threads=settings.num_threads, batch_wait_ms=settings.batch_wait_ms,
                                                max_queue=settings.max_queue,
                                                max_batch_tokens=settings.max_batch_tokens)
    except Exception:
        for model in [*models.values(), *classifiers.values()]:
            model.close()
        raise
    methods: dict[str, ZeroShotMethod] = {role: m.classifier for role, m in models.items()}
    ensemble_info: dict = {}
    if len(models) == 2:
        calibration, ensemble_info = _calibration(settings, "ensemble", models["nli"].info["fingerprint"],
                                                  models["embedding"].info["fingerprint"])
        methods["ensemble"] = EnsembleClassifier(models["nli"].classifier, models["embedding"].classifier,  # type: ignore[arg-type]
                                                 calibration=calibration)
    return ServedMethods(models=models, methods=methods, default_method=settings.method, ensemble_info=ensemble_info,
                         classifiers=classifiers)


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
