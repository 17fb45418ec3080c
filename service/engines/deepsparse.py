"""DeepSparse engine: static-shape compiled engines, one per (batch, sequence length) bucket.

DeepSparse compiles a graph for fixed input shapes, so this engine keeps one compiled engine per
``(batch, seq_len)`` bucket and pads each batch (rows and columns) up to the smallest bucket that fits:
a request of 4 pairs of 20 tokens runs in the ``(4, 32)`` engine, not in a ``(32, 512)`` one. Buckets
compile on first use (``lazy``), all at construction (``startup``), or in a background thread once the
engine is chosen (``background``: the service is ready after the first bucket, and later requests rarely
wait for a compilation). DeepSparse rewrites a model file's input shapes in place, so every bucket compiles
its own copy of the graph, deleted once compiled.
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


def batch_buckets(batch_size: int) -> tuple[int, ...]:
    """Row buckets: a quarter of ``batch_size`` for small requests, and ``batch_size`` (32 -> 8, 32).

    Two row sizes, not more: every compiled bucket holds its own copy of the model (about 150 MB of RSS for
    the MiniLM teacher), and with micro-batching most batches are full. Measured on this project's 2-core
    machine (``benchmarks/deepsparse_compile.py``): 24 buckets took 85 s to compile and 3.8 GB of RSS.
    """
    return tuple(sorted({max(1, batch_size // 4), batch_size}))


def plan_chunks(rows: int, buckets: tuple[int, ...]) -> list[tuple[int, int]]:
    """Split ``rows`` into ``(real rows, bucket)`` chunks: full largest buckets, then the smallest bucket that
    holds the rest (so padding rows are fewer than the rest itself)."""
    largest, plan = buckets[-1], []
    while rows > 0:
        take = min(rows, largest)
        plan.append((take, next(b for b in buckets if b >= take)))
        rows -= take
    return plan


class DeepSparseEngine(Engine):
    """Runs an ONNX graph on DeepSparse with static shapes (see the module docstring).

    Args:
        onnx_path: the graph (never modified: buckets compile copies).
        work_dir: where the per-bucket copies go (inside the cache directory).
        batch_size: rows of the largest compiled engine; smaller row buckets are :func:`batch_buckets`.
        max_length: longest sequence; the last bucket.
        num_threads: cores DeepSparse may use (``None``: all).
        compile: ``lazy``, ``startup`` or ``background`` (see the module docstring; ``background`` starts with
            :meth:`start_background_compile`); ``deferred``: like ``lazy`` without compiling the first bucket at
            construction (``engine=auto``'s timing process, whose first timed call compiles, and fails, instead).

    Raises:
        EngineError: deepsparse is not installed, or the first bucket fails to compile (tried at
            construction, except ``deferred``, so a broken graph falls back to another engine at start-up, not at
            the first request).
    """

    name = "deepsparse"

    def __init__(self, onnx_path: Path, *, work_dir: Path, batch_size: int, max_length: int,
                 num_threads: int | None = None, compile: str = "lazy"):
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
        self.row_buckets = batch_buckets(batch_size)
        self.num_threads = num_threads
        self._engines: dict[tuple[int, int], object] = {}
        self.compile_seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        try:
            import onnx

            graph = onnx.load(str(self.onnx_path), load_external_data=False).graph
            initializers = {init.name for init in graph.initializer}
            self.input_names = tuple(i.name for i in graph.input if i.name not in initializers)
        except Exception as exc:
            raise EngineError(f"could not read the inputs of {onnx_path}: {exc}") from exc
        if compile not in ("lazy", "startup", "background", "deferred"):
            raise EngineError(f"unknown compile policy {compile!r}; use lazy, startup or background")
        self.compile_policy = compile
        self._closed = threading.Event()
        self._background: threading.Thread | None = None
        if compile == "startup":
            for rows, seq_len in self.all_buckets():
                self._engine_for(rows, seq_len)
        elif compile != "deferred":
            self._engine_for(self.row_buckets[0], self.buckets[0])

    def all_buckets(self) -> list[tuple[int, int]]:
        """Every ``(rows, seq_len)`` bucket, smallest work first."""
        return sorted(((r, s) for r in self.row_buckets for s in self.buckets), key=lambda b: (b[0] * b[1], b))

    def compile_bucket(self, rows: int, seq_len: int) -> None:
        """Compile the ``(rows, seq_len)`` bucket now if it is not compiled yet (``engine=auto``'s cost probe).

        Raises:
            EngineError: the compilation failed.
        """
        self._engine_for(rows, seq_len)

    def start_background_compile(self) -> None:
        """Compile the remaining buckets in a daemon thread (stops early when the engine is closed)."""
        if self._background is not None:
            return

        def run() -> None:
            for rows, seq_len in self.all_buckets():
                if self._closed.is_set():
                    return
                try:
                    self._engine_for(rows, seq_len)
                except EngineError as exc:  # a request needing this bucket will raise it again
                    logger.warning("background compilation stopped: %s", exc)
                    return
            logger.info("deepsparse: all %d buckets compiled", len(self._engines))

        self._background = threading.Thread(target=run, name="deepsparse-compile", daemon=True)
        self._background.start()

    def _engine_for(self, rows: int, seq_len: int):
        engine = self._engines.get((rows, seq_len))  # compiled buckets never wait for a compilation in progress
        if engine is not None:
            return engine
        with self._lock:
            engine = self._engines.get((rows, seq_len))
            if engine is None:
                import time

                began = time.perf_counter()
                copy = self.work_dir / f"b{rows}_s{seq_len}.{os.getpid()}.onnx"
                shutil.copyfile(self.onnx_path, copy)
                shapes = [[rows, seq_len]] * len(self.input_names)
                try:
                    engine = self._deepsparse.Engine(model=str(copy), batch_size=rows,
                                                     num_cores=self.num_threads, input_shapes=shapes)
                except Exception as exc:
                    raise EngineError(f"deepsparse failed to compile {self.onnx_path} for {shapes}: {exc}") from exc
                finally:
                    copy.unlink(missing_ok=True)
                self.compile_seconds[f"{rows}x{seq_len}"] = round(time.perf_counter() - began, 2)
                logger.info("deepsparse compiled bucket batch=%d seq_len=%d in %.1f s", rows, seq_len,
                            self.compile_seconds[f"{rows}x{seq_len}"])
                self._engines[(rows, seq_len)] = engine
            return engine

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        rows, width = inputs[self.input_names[0]].shape
        if width > self.buckets[-1]:
            raise ValueError(f"sequence length {width} exceeds the largest compiled bucket {self.buckets[-1]}")
        seq_len = next(b for b in self.buckets if b >= width)
        out, start = [], 0
        for n, bucket in plan_chunks(rows, self.row_buckets):
            engine = self._engine_for(bucket, seq_len)
            chunk = []
            for name in self.input_names:
                padded = np.zeros((bucket, seq_len), dtype=np.int64)
                padded[:n, :width] = inputs[name][start:start + n]
                chunk.append(padded)
            result = np.asarray(engine(chunk)[0][:n], dtype=np.float32)
            out.append(result[:, :width] if result.ndim == 3 else result)  # token states: drop padded positions
            start += n
        return np.concatenate(out, axis=0)

    def close(self) -> None:
        self._closed.set()

    def describe(self) -> dict:
        return {**super().describe(), "compile_policy": self.compile_policy, "batch_buckets": list(self.row_buckets), "seq_buckets": list(self.buckets),
                "compiled_buckets": [f"{r}x{s}" for r, s in sorted(self._engines)],
                "compile_seconds": dict(self.compile_seconds), "num_threads": self.num_threads,
                "onnx_path": str(self.onnx_path)}
