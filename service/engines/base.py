"""The one small interface every engine implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np


class EngineError(RuntimeError):
    """An engine could not be built (missing package, unsupported graph, failed compilation)."""


class Engine(ABC):
    """A sequence-classification forward pass: token arrays in, logits out.

    Lifecycle: construct (load / compile), call any number of times, :meth:`close`.

    Call contract: ``inputs`` maps each of :attr:`input_names` to an int64 array of shape
    ``(batch, seq_len)`` (``input_ids``, ``attention_mask``, optionally ``token_type_ids``); the
    result is a float32 array of logits, shape ``(batch, n_classes)``. Engines must accept any
    batch size and sequence length (static-shape engines pad internally) and be safe to call from
    one thread at a time.
    """

    name: ClassVar[str]
    input_names: tuple[str, ...]

    @abstractmethod
    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits ``(batch, n_classes)`` float32 for a padded batch."""

    def describe(self) -> dict:
        """Facts for ``GET /info`` (engine name, threads, compiled shapes, ...)."""
        return {"engine": self.name}

    def close(self) -> None:
        """Release native resources."""
