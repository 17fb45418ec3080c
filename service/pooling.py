"""Sentence embeddings from an encoder's token states: the pooling of sentence-transformers.

A sentence-transformers directory (``modules.json``, ``1_Pooling/config.json``) names how token
states become one vector: mean over the non-padding tokens (all-MiniLM-L6-v2), the ``[CLS]`` state,
or the max over tokens; a ``Normalize`` module then scales it to unit length. This module reads that
configuration and applies it two ways that give the same numbers:

- :class:`SentenceEmbedder`, a torch module (encoder + pooling + L2 normalisation) that the torch
  engine runs and the ONNX export traces, so pooling runs inside the graph on every engine;
- :func:`pool_numpy`, for ONNX graphs shipped with a model that output token states
  ``(batch, seq_len, hidden)``.

Reference: ``sentence_transformers.models.Pooling`` and ``Normalize`` (sentence-transformers 5.x).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

PoolingMode = Literal["mean", "cls", "max"]


@dataclass(frozen=True)
class PoolingConfig:
    """How a sentence encoder pools token states.

    Attributes:
        mode: ``mean`` (over tokens whose attention mask is 1), ``cls`` (first token) or ``max``.
        normalize: scale each embedding to unit L2 norm (then dot product = cosine similarity).
        max_seq_length: the encoder's trained input length in tokens (``sentence_bert_config.json``),
            or ``None`` when the directory does not say.
    """

    mode: PoolingMode = "mean"
    normalize: bool = True
    max_seq_length: int | None = None


def read_pooling_config(model_dir: Path) -> PoolingConfig:
    """The pooling of a sentence-transformers directory; plain HF encoders get mean pooling.

    Normalisation is always on: the embedding method scores by cosine similarity, and a model
    without a ``Normalize`` module gives the same cosines once normalised.

    Raises:
        ValueError: the pooling config asks for a mode this project does not implement
            (e.g. ``mean_sqrt_len_tokens`` or several modes concatenated).
    """
    model_dir = Path(model_dir)
    max_seq_length = None
    bert_config = model_dir / "sentence_bert_config.json"
    if bert_config.is_file():
        max_seq_length = json.loads(bert_config.read_text()).get("max_seq_length")
    modules_file = model_dir / "modules.json"
    pooling_dir = None
    if modules_file.is_file():
        for module in json.loads(modules_file.read_text()):
            if module.get("type", "").endswith("Pooling"):
                pooling_dir = model_dir / module.get("path", "")
    if pooling_dir is None or not (pooling_dir / "config.json").is_file():
        return PoolingConfig(max_seq_length=max_seq_length)
    config = json.loads((pooling_dir / "config.json").read_text())
    if "pooling_mode" in config:  # newer sentence-transformers write the mode by name
        modes = [config["pooling_mode"]]
    else:
        modes = [key[len("pooling_mode_"):] for key, on in config.items() if key.startswith("pooling_mode_") and on]
    names = {"mean_tokens": "mean", "mean": "mean", "cls_token": "cls", "cls": "cls", "max_tokens": "max", "max": "max"}
    if len(modes) != 1 or modes[0] not in names:
        raise ValueError(f"{pooling_dir / 'config.json'} asks for pooling {modes}; supported: one of mean, cls, max")
    return PoolingConfig(mode=names[modes[0]], max_seq_length=max_seq_length)  # type: ignore[arg-type]


def pool_numpy(token_states: np.ndarray, attention_mask: np.ndarray, config: PoolingConfig) -> np.ndarray:
    """Pool ``(batch, seq_len, hidden)`` token states into ``(batch, hidden)`` float32 embeddings."""
    states = np.asarray(token_states, dtype=np.float32)
    mask = np.asarray(attention_mask, dtype=np.float32)[..., None]
    if config.mode == "cls":
        pooled = states[:, 0]
    elif config.mode == "max":
        pooled = np.where(mask > 0, states, -1e9).max(axis=1)
    else:
        pooled = (states * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    if config.normalize:
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return pooled.astype(np.float32)


def sentence_embedder(model_dir: Path):
    """A :class:`SentenceEmbedder` torch module for ``model_dir`` (float32, eval mode, eager attention).

    Raises:
        ImportError: torch or transformers is missing.
        OSError / ValueError: the directory holds no loadable encoder, or its pooling is unsupported.
    """
    import torch
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
    return _embedder_class()(encoder, read_pooling_config(model_dir)).eval()


def _embedder_class():
    import torch

    class SentenceEmbedder(torch.nn.Module):
        """Encoder + pooling + L2 normalisation: ``(batch, seq_len)`` int64 ids -> ``(batch, hidden)`` float32."""

        def __init__(self, encoder, config: PoolingConfig):
            super().__init__()
            self.encoder = encoder
            self.config = config

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            states = self.encoder(**kwargs).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            if self.config.mode == "cls":
                pooled = states[:, 0]
            elif self.config.mode == "max":
                pooled = states.masked_fill(mask == 0, -1e9).max(dim=1).values
            else:
                pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if self.config.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return pooled

    return SentenceEmbedder
