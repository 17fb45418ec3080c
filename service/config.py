"""The service's configuration, in one place: environment variables ``ZSC_*`` or CLI options."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.sources import default_cache_dir

EngineName = Literal["auto", "deepsparse", "onnxruntime", "torch"]
DEFAULT_TEMPLATE = "This text is about {}."


class Settings(BaseSettings):
    """Frozen service settings. Every field can be set as ``ZSC_<FIELD>`` (e.g. ``ZSC_ENGINE=torch``).

    Limits bound one request's work: a request costs ``len(texts) * len(labels)`` forward passes.
    """

    model_config = SettingsConfigDict(env_prefix="ZSC_", frozen=True, extra="ignore")

    model: str = Field("default", description="default (embedded teacher), a model directory, a hub id or a zoo: stub")
    revision: str | None = Field(None, description="hub revision for hub ids")
    engine: EngineName = Field("auto", description="auto tries deepsparse, then onnxruntime, then torch")
    max_length: int | None = Field(None, ge=8, description="max tokens per (premise, hypothesis) pair; default: the tokenizer's")
    batch_size: int = Field(32, ge=1, le=1024, description="pairs per forward pass")
    num_threads: int | None = Field(None, ge=1, description="intra-op threads / cores; default: all")
    max_texts: int = Field(64, ge=1, description="most texts in one request")
    max_labels: int = Field(32, ge=1, description="most candidate labels in one request")
    max_text_chars: int = Field(20_000, ge=1, description="longest accepted text, in characters")
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
