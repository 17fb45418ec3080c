"""Request and response bodies of the HTTP API.

Rules that depend only on the request live here (pydantic turns their ``ValueError`` into a 422
whose ``msg`` says what to fix); limits that depend on the service's settings are checked by every
endpoint that takes texts, with one function (:func:`service.guards.check_limits`) and the same 422 shape.
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.bias import FLOOR_SHARE, BiasCorrection
from service.config import MethodChoice
from service.long_text import LongText
from service.zeroshot import validate_template

MAX_LABEL_CHARS = 200
MAX_DESCRIPTION_CHARS = 500
MAX_DESCRIPTIONS_PER_LABEL = 10
#: Fewest texts a request with ``bias_correction`` may send: the correction is estimated over them.
MIN_TEXTS_BIAS = 20


def check_descriptions(descriptions: dict[str, list[str]] | None, labels: list[str]) -> dict[str, list[str]] | None:
    """``descriptions`` if every key is one of ``labels`` and every description is a non-blank sentence of at most
    :data:`MAX_DESCRIPTION_CHARS` characters, at most :data:`MAX_DESCRIPTIONS_PER_LABEL` a label; ``ValueError``
    saying what to fix otherwise. Empty lists are dropped; ``None`` when nothing is left."""
    if not descriptions:
        return None
    unknown = [key for key in descriptions if key not in labels]
    if unknown:
        raise ValueError(f"label_descriptions names {unknown[0]!r}, which is not among the labels "
                         f"{labels}: describe candidate labels only")
    for label, texts in descriptions.items():
        if len(texts) > MAX_DESCRIPTIONS_PER_LABEL:
            raise ValueError(f"label_descriptions[{label!r}] has {len(texts)} descriptions; give at most "
                             f"{MAX_DESCRIPTIONS_PER_LABEL} a label")
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"label_descriptions[{label!r}][{i}] is empty or whitespace")
            if len(text) > MAX_DESCRIPTION_CHARS:
                raise ValueError(f"label_descriptions[{label!r}][{i}] has {len(text)} characters; keep descriptions "
                                 f"under {MAX_DESCRIPTION_CHARS}")
    kept = {label: list(texts) for label, texts in descriptions.items() if texts}
    return kept or None


def check_texts(texts: list[str]) -> list[str]:
    """``texts`` if non-empty with no blank text; ``ValueError`` saying which one otherwise."""
    if not texts:
        raise ValueError("texts is empty: send at least one text to classify")
    blank = [i for i, t in enumerate(texts) if not t.strip()]
    if blank:
        raise ValueError(f"texts[{blank[0]}] is empty or whitespace: every text needs content "
                         f"({len(blank)} such text{'s' if len(blank) > 1 else ''})")
    return texts


class ZeroShotRequest(BaseModel):
    """``POST /zero-shot``: score every (text, candidate label) pair."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(..., description="premises; one result per text, in order",
                             examples=[["The striker scored twice in the final minutes."]])
    labels: list[str] = Field(..., description="candidate labels, each put into the hypothesis template",
                              examples=[["sports", "politics", "business"]])
    hypothesis_template: str | None = Field(None, description="exactly one '{}'; default: the service's",
                                            examples=["This text is about {}."])
    multi_label: bool = Field(False, description="score labels independently (entailment vs contradiction)")
    method: MethodChoice | None = Field(None, description="nli (N x K cross-encoder passes), embedding (N + K "
                                        "sentence-encoder passes), ensemble (both) or auto (embedding for "
                                        "single-label, nli for multi-label); default: the service's")
    long_text: LongText = Field("truncate", description="texts longer than the model's window: truncate (read up to "
                                "the window; the result says truncated) or chunks (score overlapping windows and "
                                "combine them: max per label for multi-label, mean log-probability for single-label)")
    return_embeddings: bool = Field(False, description="also return each text's sentence embedding (what POST /embed "
                                    "returns) in `embeddings`: with the embedding and ensemble methods and "
                                    "long_text=truncate from the same encoder pass as the scores, else one more "
                                    "encoder pass; needs a sentence encoder (422 without one)")
    label_descriptions: dict[str, list[str]] | None = Field(
        None, description="more hypotheses for some labels, as full sentences: {label: [description, ...]}; a "
        "label's score is the mean over its hypotheses (the filled template and its descriptions); each description "
        "costs what a label costs", examples=[{"sports": ["A team won or lost a game."]}])
    bias_correction: BiasCorrection = Field(
        "none", description="single-label only: remove the label bias of the scores estimated over the texts of "
        "this request (send a whole pool, at least 20 texts): floor raises each label that is the top label of "
        f"fewer than {FLOOR_SHARE:g}/K of the texts just enough to reach it; batch removes each label's mean "
        "log-probability (assumes a balanced pool); none (default) returns the scores as the model gives them")

    @field_validator("texts")
    @classmethod
    def _texts(cls, texts: list[str]) -> list[str]:
        return check_texts(texts)

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: list[str]) -> list[str]:
        if not labels:
            raise ValueError("labels is empty: send at least one candidate label")
        for i, label in enumerate(labels):
            if not label.strip():
                raise ValueError(f"labels[{i}] is empty or whitespace: every candidate label needs a name")
            if len(label) > MAX_LABEL_CHARS:
                raise ValueError(f"labels[{i}] has {len(label)} characters; keep labels under {MAX_LABEL_CHARS}")
        repeated = [label for label, n in Counter(labels).items() if n > 1]
        if repeated:
            raise ValueError(f"labels must be unique; repeated: {', '.join(map(repr, repeated))}")
        return labels

    @field_validator("hypothesis_template")
    @classmethod
    def _template(cls, template: str | None) -> str | None:
        return None if template is None else validate_template(template)

    @model_validator(mode="after")
    def _pool_options(self) -> "ZeroShotRequest":
        self.label_descriptions = check_descriptions(self.label_descriptions, self.labels)
        if self.bias_correction != "none":
            if self.multi_label or len(self.labels) < 2:
                raise ValueError("bias_correction applies to single-label scores over at least two labels: drop it, "
                                 "or set multi_label to false")
            if len(self.texts) < MIN_TEXTS_BIAS:
                raise ValueError(f"bias_correction is estimated over the request's texts: send the whole pool, at "
                                 f"least {MIN_TEXTS_BIAS} texts (got {len(self.texts)})")
        return self


class BiasInfo(BaseModel):
    """What ``bias_correction`` did to a response's scores."""

    method: str
    shift: dict[str, float] = Field(..., description="added to each label's log-probability before renormalising")
    shares_before: dict[str, float] = Field(..., description="share of the texts whose top label each label was")
    shares_after: dict[str, float]
    note: str


class ZeroShotItem(BaseModel):
    """One text's result: candidate labels sorted by descending score."""

    text: str
    labels: list[str]
    scores: list[float]
    truncated: bool = Field(False, description="the model read only part of the text (longer than its window, or "
                            "than the windows long_text=chunks scores)")


class EncoderInfo(BaseModel):
    """The sentence encoder behind returned embeddings (as ``POST /embed`` names it)."""

    model: str
    fingerprint: str = Field(..., description="content hash of the encoder's weights: embeddings from encoders "
                             "with the same fingerprint are comparable")
    dim: int
    engine: str
    shared_pass: bool = Field(..., description="the embeddings came from the scoring pass (embedding and ensemble "
                              "methods with long_text=truncate) rather than a pass of their own")


class ZeroShotResponse(BaseModel):
    """``POST /zero-shot`` answer: ``results[i]`` belongs to ``texts[i]``; with ``return_embeddings``,
    ``embeddings[i]`` (unit length, ``encoder.dim`` floats) too."""

    results: list[ZeroShotItem]
    method: str
    model: str
    engine: str
    hypothesis_template: str
    multi_label: bool
    embeddings: list[list[float]] | None = Field(None, description="with return_embeddings: one sentence embedding "
                                                 "per text, equal to POST /embed's")
    encoder: EncoderInfo | None = Field(None, description="with return_embeddings: the encoder that made them")
    bias: BiasInfo | None = Field(None, description="with bias_correction: what was estimated and applied")


class EmbedRequest(BaseModel):
    """``POST /embed``: sentence embeddings from the served sentence encoder (the embedding method's model)."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(..., description="texts to embed; one vector per text, in order",
                             examples=[["The striker scored twice in the final minutes."]])

    @field_validator("texts")
    @classmethod
    def _texts(cls, texts: list[str]) -> list[str]:
        return check_texts(texts)


class EmbedResponse(BaseModel):
    """``POST /embed`` answer: ``embeddings[i]`` (unit length, ``dim`` floats) belongs to ``texts[i]``."""

    embeddings: list[list[float]]
    model: str
    fingerprint: str = Field(..., description="content hash of the encoder's weights: embeddings from encoders "
                             "with the same fingerprint are comparable")
    dim: int
    engine: str


class ClassifyRequest(BaseModel):
    """``POST /classify``: label distributions from a fine-tuned classifier (a fixed label set, one pass a text)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    texts: list[str] = Field(..., description="texts to classify; one result per text, in order",
                             examples=[["The striker scored twice in the final minutes."]])
    model: str | None = Field(None, description="name of a loaded classifier (GET /info); optional when one is loaded")

    @field_validator("texts")
    @classmethod
    def _texts(cls, texts: list[str]) -> list[str]:
        return check_texts(texts)


class ClassifyResponse(BaseModel):
    """``POST /classify`` answer: ``results[i]`` belongs to ``texts[i]``, labels by descending probability."""

    model_config = ConfigDict(protected_namespaces=())

    results: list[ZeroShotItem]
    model: str
    engine: str
    multi_label: bool
