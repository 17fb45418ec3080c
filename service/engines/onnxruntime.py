"""ONNX Runtime engine (CPU execution provider), dynamic shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.engines.base import Engine, EngineError

#: Values of the ``arena`` argument (setting ``ZSC_ORT_ARENA``), see :class:`OnnxRuntimeEngine`.
ARENA_POLICIES = ("shrink", "off", "on")


class OnnxRuntimeEngine(Engine):
    """Runs an ONNX graph with dynamic ``(batch, seq_len)`` inputs on ONNX Runtime's CPU provider.

    Args:
        onnx_path: the graph; its inputs are a subset of input_ids / attention_mask / token_type_ids.
        num_threads: intra-op threads (``None``: ONNX Runtime's default, one per physical core).
        allow_spinning: whether idle intra-op threads spin (busy-wait) between ops (ONNX Runtime's
            ``session.intra_op.allow_spinning``; ``None`` keeps its default, on). Off returns the cores to
            other threads of the process (tokenizer, HTTP) and to other processes sooner; which is faster
            depends on the machine: ``benchmarks/ort_variants.py`` measures both.
        arena: what ONNX Runtime's CPU memory arena does with the memory of the activations:

            - ``shrink``: the arena serves each call, and at the end of every call
              its unused chunks are returned to the system (ONNX Runtime's run option
              ``memory.enable_memory_arena_shrinkage = cpu:0``, ``onnxruntime_run_options_config_keys.h``), so
              resident memory follows the call in progress instead of the largest shape ever seen;
            - ``off``: no arena (``SessionOptions.enable_cpu_mem_arena = False``): every tensor from the C heap;
            - ``on`` (ONNX Runtime's and the service's default): the arena grows to the largest (batch, length)
              seen, rounding each extension to the next power of two (``kNextPowerOfTwo``), and keeps it for the
              process's life. The service bounds the largest call (``ZSC_MAX_BATCH_TOKENS``), so the arena levels
              off at that call's size; ``shrink`` pays a system allocation per call for it (slower on short texts).

            Measured under 16 clients (``benchmarks/load.py``, ``docs/speed.md#load``).

    Raises:
        EngineError: onnxruntime is not installed or cannot load the graph, or ``arena`` is not one of
            :data:`ARENA_POLICIES`.
    """

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, *, num_threads: int | None = None, allow_spinning: bool | None = None,
                 arena: str = "on"):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineError("onnxruntime is not installed (pip install onnxruntime)") from exc
        if arena not in ARENA_POLICIES:
            raise EngineError(f"unknown ONNX Runtime arena policy {arena!r}; choose one of {', '.join(ARENA_POLICIES)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        if allow_spinning is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        if arena == "off":
            options.enable_cpu_mem_arena = False
        self.run_options = None
        if arena == "shrink":
            self.run_options = ort.RunOptions()
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EngineError(f"onnxruntime could not load {onnx_path}: {exc}") from exc
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.onnx_path = Path(onnx_path)
        self.num_threads = num_threads
        self.allow_spinning = allow_spinning
        self.arena = arena

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: inputs[k] for k in self.input_names}
        return self.session.run(None, feed, self.run_options)[0].astype(np.float32, copy=False)

    def describe(self) -> dict:
        return {**super().describe(), "onnx_path": str(self.onnx_path), "num_threads": self.num_threads,
                "allow_spinning": self.allow_spinning, "arena": self.arena}
