"""Where ``python -m annotate`` finds Argilla and the scoring service: environment variables or CLI options.

The Argilla variables are the ones the Argilla SDK itself reads (``ARGILLA_API_URL``, ``ARGILLA_API_KEY``);
the project's own are ``ANNOTATE_*``. CLI options override both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class AnnotateSettings(BaseSettings):
    """Connection settings of the pre-annotation loop (all optional until a command needs them)."""

    model_config = SettingsConfigDict(env_prefix="ANNOTATE_", extra="ignore", populate_by_name=True)

    api_url: str | None = Field(None, validation_alias=AliasChoices("ARGILLA_API_URL", "ANNOTATE_API_URL"),
                                description="Argilla server URL, e.g. http://localhost:6900")
    api_key: str | None = Field(None, validation_alias=AliasChoices("ARGILLA_API_KEY", "ANNOTATE_API_KEY"),
                                description="Argilla API key of an owner or admin")
    workspace: str = Field("argilla", validation_alias=AliasChoices("ARGILLA_WORKSPACE", "ANNOTATE_WORKSPACE"),
                           description="Argilla workspace holding the dataset")
    dataset: str | None = Field(None, description="Argilla dataset name (env ANNOTATE_DATASET)")
    service_url: str | None = Field(None, description="zero-shot service URL; unset: score in-process "
                                                      "(env ANNOTATE_SERVICE_URL)")
    service_api_key: str | None = Field(None, description="API key of the zero-shot service when it requires one "
                                                          "(its ZSC_API_KEY; env ANNOTATE_SERVICE_API_KEY)")
    model: str = Field("default", description="in-process model (env ANNOTATE_MODEL), as the service's ZSC_MODEL")
    engine: str = Field("onnxruntime", description="in-process engine (env ANNOTATE_ENGINE), as ZSC_ENGINE")
    cache_dir: Path = Field(Path.home() / ".cache" / "zeroshot-preannotate" / "annotate",
                            description="local cache of scored pools (zero-shot scores + embeddings) and adapted heads, "
                                        "one folder per Argilla server, workspace and dataset (env ANNOTATE_CACHE_DIR)")
    tool: Literal["argilla", "labelstudio"] = Field("argilla", description="the annotation tool of push, refresh, "
                                                    "accept, suspects and export (env ANNOTATE_TOOL)")
    labelstudio_url: str | None = Field(None, validation_alias=AliasChoices("LABEL_STUDIO_URL",
                                                                            "ANNOTATE_LABELSTUDIO_URL"),
                                        description="Label Studio server URL, e.g. http://127.0.0.1:8080")
    labelstudio_api_key: str | None = Field(None, validation_alias=AliasChoices("LABEL_STUDIO_API_KEY",
                                                                                "ANNOTATE_LABELSTUDIO_API_KEY"),
                                            description="Label Studio legacy API token of an administrator")
    bias_correction: Literal["floor", "batch", "none"] = Field(
        "floor", description="how push, refresh, adapt and simulate remove the label bias of the zero-shot scores over "
        "the pool (env ANNOTATE_BIAS_CORRECTION): floor raises each label that is the top label of fewer than half "
        "its fair share (1/2K) of the pool just enough to reach it, batch assumes a balanced pool, none keeps the "
        "scores as the model gives them (a pool in which some candidate labels truly do not occur)")

    @model_validator(mode="after")
    def _local_stack(self) -> "AnnotateSettings":
        """With neither ``api_url`` nor ``api_key`` given, take both from the state file of
        ``python -m annotate stack up`` (:func:`annotate.stack.default_state_path`) when one exists; likewise the
        Label Studio URL and token from ``stack up --tool labelstudio``'s."""
        if self.api_url is None and self.api_key is None:
            from annotate.stack import default_state_path

            path = default_state_path()
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
                self.api_url, self.api_key = state["url"], state["api_key"]
                self.workspace = state.get("workspace", self.workspace)
            except (OSError, ValueError, KeyError):
                pass
        if self.labelstudio_url is None and self.labelstudio_api_key is None:
            from annotate.labelstudio.stack import default_state_path as labelstudio_state

            try:
                state = json.loads(labelstudio_state().read_text(encoding="utf-8"))
                self.labelstudio_url, self.labelstudio_api_key = state["url"], state["api_key"]
            except (OSError, ValueError, KeyError):
                pass
        return self

    def require(self, *names: str) -> None:
        """Raise ``ValueError`` naming the first of ``names`` that is unset (option and variable to set)."""
        hints = {"api_url": "--api-url or ARGILLA_API_URL (or start a local one: python -m annotate stack up)",
                 "api_key": "--api-key or ARGILLA_API_KEY",
                 "labelstudio_url": "--api-url or LABEL_STUDIO_URL (or start a local one: python -m annotate stack "
                                    "up --tool labelstudio)",
                 "labelstudio_api_key": "--api-key or LABEL_STUDIO_API_KEY",
                 "dataset": "--dataset or ANNOTATE_DATASET"}
        for name in names:
            if not getattr(self, name):
                raise ValueError(f"no {name.replace('_', ' ')} given: set {hints.get(name, name)}")
