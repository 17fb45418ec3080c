"""Dynamic padding: run tokenized sequences through an engine in length-sorted batches.

Sequences are sorted by length, so each batch is padded only to its own longest member and a
batch never pays for padding that it does not need; results come back in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np


class BatchEngine(Protocol):
    """What batching needs of an engine (see :class:`service.engines.base.Engine`)."""

    input_names: tuple[str, ...]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


def run_sorted_batches(engine: BatchEngine, input_ids: Sequence[Sequence[int]], *, batch_size: int, pad_id: int,
                       token_type_ids: Sequence[Sequence[int]] | None = None,
                       postprocess: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray] | None = None,
                       ) -> np.ndarray:
    """Engine outputs for tokenized sequences, one row per sequence, in input order.

    Args:
        engine: maps a dict of int64 ``(batch, width)`` arrays (``input_ids``, ``attention_mask``,
            ``token_type_ids``, whichever it takes) to a float array with ``batch`` rows.
        input_ids: token ids of each sequence (unpadded, already truncated).
        batch_size: sequences per engine call.
        pad_id: the tokenizer's padding id.
        token_type_ids: segment ids aligned with ``input_ids`` (zeros when ``None``).
        postprocess: applied to each batch's output with that batch's inputs (e.g. pooling token
            states with the attention mask); must return ``(batch, ...)``.

    Returns:
        ``(len(input_ids), ...)`` float32; an empty ``(0, 0)`` array for no sequences.
    """
    order = np.argsort([len(x) for x in input_ids], kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(input_ids[i]) for i in idx)
        ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        attention = np.zeros((len(idx), width), dtype=np.int64)
        types = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            n = len(input_ids[i])
            ids[row, :n] = input_ids[i]
            attention[row, :n] = 1
            if token_type_ids is not None:
                types[row, :n] = token_type_ids[i]
        batch = {"input_ids": ids, "attention_mask": attention, "token_type_ids": types}
        result = engine({k: v for k, v in batch.items() if k in engine.input_names})
        if postprocess is not None:
            result = postprocess(result, batch)
        if out is None:
            out = np.empty((len(input_ids), *result.shape[1:]), dtype=np.float32)
        out[idx] = result
    return out if out is not None else np.empty((0, 0), dtype=np.float32)
