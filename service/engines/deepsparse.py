"""DeepSparse engine: static-shape compiled engines, one per sequence-length bucket.

DeepSparse compiles a graph for fixed input shapes, so this engine keeps one compiled engine per
``(batch_size, seq_len)`` bucket and pads each batch (rows and columns) up to the smallest bucket
that fits. Buckets are compiled lazily, on first use. DeepSparse rewrites a model file's input
shapes in place, so every bucket compiles its own copy of the graph, kept in the cache directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from service.engines.base import Engine, EngineError

logger = logging.getLogger(__name__)

#: Sequence-length buckets (tokens); the largest is replaced by the model's max length.
SEQ_BUCKETS = (16, 32, 64, 128, 256, 512)


def seq_buckets(max_length: int) -> tuple[int, ...]:
    """The buckets up to ``max_length``, always ending with ``max_length`` itself."""
    return tuple(b for b in SEQ_BUCKETS if b < max_length) + (max_length,)


class DeepSparseEngine(Engine):
    """Runs an ONNX graph on DeepSparse with static shapes (see the module docstring).

    Args:
        onnx_path: the graph (never modified: buckets compile copies).
        work_dir: where the per-bucket copies go (inside the cache directory).
        batch_size: rows of every compiled engine; shorter batches are padded with empty rows.
        max_length: longest sequence; the last bucket.
        num_threads: cores DeepSparse may use (``None``: all).

    Raises:
        EngineError: deepsparse is not installed, or the first bucket fails to compile (tried at
            construction so a broken graph falls back to another engine at start-up, not at the
            first request).
    """

    name = "deepsparse"

    def __init__(self, onnx_path: Path, *, work_dir: Path, batch_size: int, max_length: int,
                 num_threads: int | None = None):
        os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
        try:
            import deepsparse
        except ImportError as exc:
            raise EngineError("deepsparse is not installed (pip install '.[deepsparse]')") from exc
        self._deepsparse = deepsparse
        self.onnx_path = Path(onnx_path)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.batch_size = batch_size
        self.buckets = seq_buckets(max_length)
        self.num_threads = num_threads
        self._engines: dict[int, object] = {}
        self._lock = threading.Lock()
        try:
            import onnx

            graph = onnx.load(str(self.onnx_path), load_external_data=False).graph
            initializers = {init.name for init in graph.initializer}
            self.input_names = tuple(i.name for i in graph.input if i.name not in initializers)
        except Exception as exc:
            raise EngineError(f"could not read the inputs of {onnx_path}: {exc}") from exc
        self._engine_for(self.buckets[0])

    def _engine_for(self, seq_len: int):
        with self._lock:
            engine = self._engines.get(seq_len)
            if engine is None:
                copy = self.work_dir / f"b{self.batch_size}_s{seq_len}.onnx"
                if not copy.is_file():
                    tmp = copy.with_suffix(".tmp")
                    shutil.copyfile(self.onnx_path, tmp)
                    os.replace(tmp, copy)
                shapes = [[self.batch_size, seq_len]] * len(self.input_names)
                try:
                    engine = self._deepsparse.Engine(model=str(copy), batch_size=self.batch_size,
                                                     num_cores=self.num_threads, input_shapes=shapes)
                except Exception as exc:
                    raise EngineError(f"deepsparse failed to compile {self.onnx_path} for {shapes}: {exc}") from exc
                logger.info("deepsparse compiled bucket batch=%d seq_len=%d", self.batch_size, seq_len)
                self._engines[seq_len] = engine
            return engine

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        rows, width = inputs[self.input_names[0]].shape
        if width > self.buckets[-1]:
            raise ValueError(f"sequence length {width} exceeds the largest compiled bucket {self.buckets[-1]}")
        seq_len = next(b for b in self.buckets if b >= width)
        engine = self._engine_for(seq_len)
        out = []
        for start in range(0, rows, self.batch_size):
            chunk = []
            for name in self.input_names:
                padded = np.zeros((self.batch_size, seq_len), dtype=np.int64)
                part = inputs[name][start:start + self.batch_size]
                padded[: len(part), :width] = part
                chunk.append(padded)
            n = min(self.batch_size, rows - start)
            result = np.asarray(engine(chunk)[0][:n], dtype=np.float32)
            out.append(result[:, :width] if result.ndim == 3 else result)  # token states: drop padded positions
        return np.concatenate(out, axis=0)

    def describe(self) -> dict:
        return {"engine": self.name, "batch_size": self.batch_size, "seq_buckets": list(self.buckets),
                "compiled_buckets": sorted(self._engines), "num_threads": self.num_threads}
