"""The one small interface every engine implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np


class EngineError(RuntimeError):
    """An engine could not be built (missing package, unsupported graph, failed compilation)."""


class Engine(ABC):
    """One forward pass of an encoder graph: token arrays in, one float array out.

    Lifecycle: construct (load / compile), call any number of times, :meth:`close`.

    Call contract: ``inputs`` maps each of :attr:`input_names` to an int64 array of shape
    ``(batch, seq_len)`` (``input_ids``, ``attention_mask``, optionally ``token_type_ids``); the
    result is the graph's first output as float32: NLI logits ``(batch, n_classes)``, pooled sentence
    embeddings ``(batch, hidden)``, or, for a shipped encoder graph, token states
    ``(batch, seq_len, hidden)`` (pooled by :mod:`service.embedding`). Engines must accept any
    batch size and sequence length (static-shape engines pad internally) and be safe to call from
    one thread at a time.
    """

    name: ClassVar[str]
    input_names: tuple[str, ...]
    #: Graph form run: ``none`` (float32) or an int8 form of :data:`service.quantization.MODES`.
    int8: str = "none"
    #: How ``engine=auto`` chose this engine (measured rates), or ``None`` when it was named.
    selection: dict | None = None

    @abstractmethod
    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's first output, float32, for a padded batch (see the class docstring)."""

    def describe(self) -> dict:
        """Facts for ``GET /info`` (engine name, graph form, threads, compiled shapes, auto's measurements)."""
        return {"engine": self.name, "int8": self.int8, **({"auto_selection": self.selection} if self.selection else {})}

    def close(self) -> None:
        """Release native resources."""
