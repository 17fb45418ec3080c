"""The one small interface every engine implements."""

from __future__ import annotations

import importlib.metadata
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

#: The clause of DeepSparse's licence (``deepsparse-*.dist-info/LICENSE``, section 1, "Neural Magic DeepSparse
#: Community License") that limits its use; quoted in ``/info`` and in the start-up warning when it serves.
DEEPSPARSE_TERMS = ("solely for evaluation use in development and testing environments, and not for production use")


def licence(kind: str) -> str:
    """The licence an engine's package declares (its metadata ``License`` or ``License-Expression``), and for
    DeepSparse the clause that limits its use (:data:`DEEPSPARSE_TERMS`); ``unknown`` when not installed."""
    dists = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
             "deepsparse": ("deepsparse", "deepsparse-nightly"), "torch": ("torch",)}.get(kind, (kind,))
    name = "unknown"
    for dist in dists:
        try:
            meta = importlib.metadata.metadata(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        name = (meta.get("License-Expression") or meta.get("License") or "unknown").strip().splitlines()[0][:80]
        break
    if kind == "deepsparse":
        return f"{name}: {DEEPSPARSE_TERMS}"
    return name


@dataclass(frozen=True)
class Budget:
    """What one model's engine may cost a warm start of the service (``engine=auto``, issue 23); ``None``: unbounded.

    Attributes:
        start_s: seconds to build the engine (ONNX Runtime's session; DeepSparse's compilations at start-up).
        rss_mb: resident memory the engine adds to the process, in MiB (2^20 bytes, as ``VmRSS``),
            including what it will compile later (DeepSparse's lazily compiled buckets).
    """

    start_s: float | None = None
    rss_mb: float | None = None

    def excess(self, cost: dict) -> list[str]:
        """Why ``cost`` (:func:`service.engines.selection.engine_cost`'s dict) does not fit; empty when it fits."""
        out = []
        if self.start_s is not None and cost["projected_start_s"] > self.start_s:
            out.append(f"projected warm start {cost['projected_start_s']:.1f} s > {self.start_s:.1f} s")
        if self.rss_mb is not None and cost["projected_rss_mb"] > self.rss_mb:
            out.append(f"projected memory {cost['projected_rss_mb']:.0f} MB > {self.rss_mb:.0f} MB")
        return out

    def describe(self) -> dict:
        """The budget as ``/info`` shows it (rounded)."""
        return {k: (round(v, 1) if v is not None else None) for k, v in asdict(self).items()}


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
    #: How ``engine=auto`` chose this engine (measured rates, projected costs), or ``None`` when it was named.
    selection: dict | None = None
    #: Why this engine serves, in one sentence (``auto``'s reason, or the setting that named it).
    why: str = ""

    @abstractmethod
    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's first output, float32, for a padded batch (see the class docstring)."""

    def describe(self) -> dict:
        """Facts for ``GET /info`` (engine name, why it serves, its licence, graph form, threads, compiled shapes,
        auto's measurements)."""
        return {"engine": self.name, "engine_why": self.why, "engine_licence": licence(self.name), "int8": self.int8,
                **({"auto_selection": self.selection} if self.selection else {})}

    def close(self) -> None:
        """Release native resources."""
