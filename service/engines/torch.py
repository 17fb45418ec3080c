"""PyTorch reference engine: the Hugging Face model itself, float32, eager attention."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.engines.base import Engine, EngineError


class TorchEngine(Engine):
    """The model itself in float32 on the CPU: the numerical reference.

    ``task="sequence-classification"`` runs ``AutoModelForSequenceClassification`` (logits out);
    ``task="sentence-embedding"`` runs :func:`service.pooling.sentence_embedder` (pooled, normalised
    embeddings out).

    Raises:
        EngineError: torch/transformers are not installed or the directory has no torch weights.
    """

    name = "torch"

    def __init__(self, model_dir: Path, *, num_threads: int | None = None, task: str = "sequence-classification"):
        from service.onnx_export import torch_disabled

        if torch_disabled():
            raise EngineError("the torch engine needs transformers with torch, and this process runs it without "
                              "(USE_TORCH=0; python -m service sets it unless --engine torch)")
        try:
            import torch
            from transformers import AutoModelForSequenceClassification
        except ImportError as exc:
            raise EngineError("the torch engine needs torch and transformers (pip install '.[torch]')") from exc
        if num_threads:
            torch.set_num_threads(num_threads)
        try:
            if task == "sentence-embedding":
                from service.pooling import sentence_embedder

                self.model = sentence_embedder(model_dir)
                forward = self.model.encoder.forward
            else:
                self.model = AutoModelForSequenceClassification.from_pretrained(
                    model_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
                forward = self.model.forward
        except Exception as exc:
            raise EngineError(f"could not load a torch model from {model_dir}: {exc}") from exc
        import inspect

        self.task = task
        accepted = inspect.signature(forward).parameters
        self.input_names = tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted)
        self._torch = torch
        self.num_threads = num_threads

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(inputs[k]) for k in self.input_names}
            out = self.model(**tensors)
            return (out if self.task == "sentence-embedding" else out.logits).float().numpy()

    def describe(self) -> dict:
        return {**super().describe(), "num_threads": self._torch.get_num_threads()}
