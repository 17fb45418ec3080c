"""The service's configuration, in one place: environment variables ``ZSC_*`` or CLI options."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.sources import default_cache_dir

EngineName = Literal["auto", "deepsparse", "onnxruntime", "torch"]
#: Graph form: the model's calibrated int8 choice per engine (auto), float32 (none), or one int8 form.
QuantizationName = Literal["auto", "none", "qdq", "integer", "dynamic"]
MethodName = Literal["nli", "embedding", "ensemble"]
#: ``auto`` picks per request (:meth:`Settings.resolve_method`).
MethodChoice = Literal["auto", "nli", "embedding", "ensemble"]
METHODS: tuple[str, ...] = ("nli", "embedding", "ensemble")
DEFAULT_TEMPLATE = "This text is about {}."
#: A model setting that loads no model of that role.
NO_MODEL = "none"


class Settings(BaseSettings):
    """Frozen service settings. Every field can be set as ``ZSC_<FIELD>`` (e.g. ``ZSC_ENGINE=torch``).

    Limits bound one request's work: an ``nli`` or ``ensemble`` request costs
    ``len(texts) * len(labels)`` forward passes, an ``embedding`` one ``len(texts) + len(labels)``.
    """

    model_config = SettingsConfigDict(env_prefix="ZSC_", frozen=True, extra="ignore", protected_namespaces=())

    model: str = Field("default", description="NLI model: default (embedded teacher), a model directory, a hub id, "
                       "a zoo: stub, or none")
    embedding_model: str = Field("default", description="sentence encoder of the embedding method: default "
                                 "(packaged all-MiniLM-L6-v2), a sentence-transformers directory, a hub id, or none")
    method: MethodChoice = Field("auto", description="zero-shot method when a request names none; auto: embedding "
                                 "for single-label requests, nli for multi-label ones (README, Zero-shot methods)")
    classifiers: dict[str, str] = Field(default_factory=dict, description="fine-tuned classifiers served by POST "
                                        "/classify, name -> model directory (train/finetune.py output); env as JSON: "
                                        "ZSC_CLASSIFIERS='{\"ag_news\": \"runs/student\"}'")
    revision: str | None = Field(None, description="hub revision for hub ids")
    engine: EngineName = Field("auto", description="auto measures what onnxruntime and deepsparse cost a start "
                               "(seconds, memory) and how fast they run (in a child process, remembered in cache_dir "
                               "per CPU, engine versions, graphs, threads and batch shapes) and runs the fastest that "
                               "fits max_start_s and max_rss_mb (torch only when neither runs)")
    max_start_s: float | None = Field(15.0, gt=0, description="engine=auto: start-up budget of a warm start, in "
                                      "seconds, shared by the models loaded; an engine whose projected build (e.g. "
                                      "DeepSparse compiling its buckets at every start) exceeds its share is not "
                                      "chosen (issue 23's target: 15 s)")
    max_rss_mb: float | None = Field(1000.0, gt=0, description="engine=auto: the server's resident-memory budget in "
                                     "MiB, shared by the models loaded; an engine whose projected memory (e.g. "
                                     "DeepSparse's compiled buckets) exceeds its share is not chosen (issue 23's "
                                     "target: 1 GB)")
    ort_arena: Literal["shrink", "off", "on"] = Field("on", description="ONNX Runtime's CPU memory arena: on "
                                                      "(ONNX Runtime's default: grows to the largest call and keeps "
                                                      "it; max_batch_tokens bounds that call), shrink (unused chunks "
                                                      "returned after every call: a little less memory, slower on "
                                                      "short texts), off (no arena)")
    malloc_mmap_threshold_kib: int = Field(1024, ge=0, le=32768, description="glibc: allocations of this many KiB "
                                           "or more get their own mapping, returned to the OS when freed (memory "
                                           "flat under load, service/allocator.py); 0 keeps glibc's dynamic "
                                           "threshold; MALLOC_MMAP_THRESHOLD_ in the environment wins")
    quantization: QuantizationName = Field("auto", description="auto: the int8 form each engine runs best "
                                           "(the model's quantization.json; float32 without one); none: float32; "
                                           "qdq, integer, dynamic: that int8 form on every engine")
    max_length: int | None = Field(None, ge=8, description="max tokens per (premise, hypothesis) pair; default: the tokenizer's")
    embedding_max_length: int | None = Field(None, ge=8, description="max tokens per text for the sentence encoder; "
                                             "default: its max_seq_length")
    batch_size: int = Field(32, ge=1, le=1024, description="pairs per forward pass")
    max_batch_tokens: int = Field(1024, ge=0, description="most padded tokens (rows x longest sequence) per forward "
                                  "pass: bounds each call's activation memory, and batches past a few thousand tokens "
                                  "run slower per row (benchmarks/batch_tokens.py); 0: batch_size alone; engines "
                                  "with dynamic shapes only (DeepSparse's static buckets take none)")
    batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="micro-batching: longest wait (ms) for concurrent "
                                 "requests to fill a batch; 0 turns micro-batching off")
    max_queue: int = Field(16384, ge=1, description="most sequences waiting for the engine; beyond it requests get "
                           "503 with Retry-After")
    deepsparse_compile: Literal["lazy", "startup", "background"] = Field(
        "startup", description="when DeepSparse compiles its (batch, seq) buckets: on first use, all at start-up "
        "(before /ready turns 200), or in the background once the service is ready (README, 'Speed': measured)")
    num_threads: int | None = Field(None, ge=1, description="intra-op threads / cores; default: all")
    remeasure: bool = Field(False, description="engine=auto: time the engines again even when the cache holds a "
                            "measurement for this CPU, engine versions, graphs, threads and batch size")
    max_texts: int = Field(64, ge=1, description="most texts in one request")
    max_labels: int = Field(32, ge=1, description="most candidate labels in one nli or ensemble request")
    max_labels_embedding: int = Field(512, ge=1, description="most candidate labels in one embedding request")
    label_cache_size: int = Field(4096, ge=1, description="hypothesis embeddings kept by the embedding method (LRU)")
    calibrate: bool = Field(True, description="apply the fitted temperatures stored with the models; false gives "
                            "raw scores (NLI: exactly Hugging Face's zero-shot pipeline)")
    calibration_dir: Path | None = Field(None, description="extra directory of calibration files "
                                         "(python -m train.calibrate --output-dir), searched before the embedded ones")
    max_text_chars: int = Field(100_000, ge=1, description="longest accepted text, in characters, on every endpoint "
                                "that takes texts; beyond it 422 (texts longer than a model's window are truncated or "
                                "chunked, not refused: 100,000 characters are about 22,000 English tokens, the order "
                                "of what long_text=chunks reads with the default max_chunks: 12,000 tokens with a "
                                "256-token encoder, 24,000 with a 512-token NLI model)")
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1, description="largest accepted request body, in bytes "
                                "(Content-Length and the bytes actually received); beyond it 413. 2 MiB holds a full "
                                "request of work: max_texts texts of 32 kB, or 20 texts of max_text_chars characters")
    body_timeout_s: float = Field(30.0, gt=0, description="seconds a request's body may take to arrive whole, from "
                                  "the request's start; beyond it 408 and the connection is closed. The body is read "
                                  "before the request takes a concurrency slot, so a slow upload holds none")
    max_chunks: int = Field(64, ge=1, description="long_text=chunks: most windows scored per text (the first ones; "
                            "a text with more is marked truncated)")
    max_concurrent_requests: int = Field(128, ge=1, description="most requests in progress at once (all but /health, "
                                         "/ready and /metrics); beyond it 429 with Retry-After")
    api_key: SecretStr | None = Field(None, description="when set, every endpoint but /health and /ready needs the "
                                      "header 'Authorization: Bearer <key>' (401 otherwise)")
    timeout_graceful_shutdown: float = Field(30.0, ge=0, description="python -m service: on SIGTERM, seconds to let "
                                             "requests in progress finish before they are cancelled")
    hypothesis_template: str = Field(DEFAULT_TEMPLATE, description="default template when a request gives none")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="derived artifacts (ONNX exports, engine copies)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"

    @field_validator("hypothesis_template")
    @classmethod
    def _one_placeholder(cls, value: str) -> str:
        from service.zeroshot import validate_template

        return validate_template(value)

    @model_validator(mode="after")
    def _default_method_loadable(self) -> "Settings":
        if self.method == "auto":
            if self.model == NO_MODEL and self.embedding_model == NO_MODEL and not self.classifiers:
                raise ValueError(f"model and embedding_model are both {NO_MODEL!r} and no classifier is named: "
                                 "name at least one model")
            return self
        needs = {"nli": ("model",), "embedding": ("embedding_model",), "ensemble": ("model", "embedding_model")}
        off = [name for name in needs[self.method] if getattr(self, name) == NO_MODEL]
        if off:
            raise ValueError(f"method {self.method!r} needs {' and '.join(off)} to name a model, not {NO_MODEL!r}")
        return self

    def resolve_method(self, requested: str | None, multi_label: bool) -> str:
        """The method that serves a request: the one it names, else ``method``; ``auto`` means ``embedding``
        for single-label and ``nli`` for multi-label requests (each when loaded, else the other).

        Why: on the project's benchmark (README, "Zero-shot methods") the embedding method is more accurate
        and several times faster on single-label tasks, while only NLI has the entailment semantics that
        independent per-label scores need.
        """
        method = requested or self.method
        if method != "auto":
            return method
        loaded = self.methods()
        preferred = ("nli", "embedding") if multi_label else ("embedding", "nli")
        return next(m for m in preferred if m in loaded)

    def methods(self) -> tuple[str, ...]:
        """The methods these settings can serve (those whose models are not ``none``)."""
        nli, embedding = self.model != NO_MODEL, self.embedding_model != NO_MODEL
        return tuple(m for m, ok in (("nli", nli), ("embedding", embedding), ("ensemble", nli and embedding)) if ok)
