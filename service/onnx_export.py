"""ONNX export of Hugging Face sequence classifiers and sentence encoders, cached by content; graph inspection.

Exports use PyTorch's TorchScript-based exporter at opset 14: DeepSparse 1.8 does not support the
``LayerNormalization`` op of opset 17, and the dynamo exporter (PyTorch's default since 2.9) would
emit it. The export is a derived artifact: it lives in the cache directory under the model's
content fingerprint and is rebuilt on demand, never committed.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from service.sources import ModelSource

logger = logging.getLogger(__name__)

OPSET = 14
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
#: What a graph computes: NLI logits ``(batch, n_classes)`` or pooled, normalised embeddings ``(batch, hidden)``.
TASKS = ("sequence-classification", "sentence-embedding")
_FILE_NAMES = {"sequence-classification": "model.onnx", "sentence-embedding": "sentence_embedding.onnx"}


class ExportError(RuntimeError):
    """The ONNX graph could not be produced (no torch, no weights, exporter failure)."""


def onnx_for(source: ModelSource, cache_dir: Path, task: str = "sequence-classification", int8: str = "none") -> Path:
    """The ONNX graph of a model for ``task`` (one of :data:`TASKS`): the one it ships with, or a
    cached export of its torch weights (``<cache_dir>/onnx/<fingerprint>/<task file>``).

    A shipped graph is taken as is: for ``sentence-embedding`` it may output token states
    ``(batch, seq_len, hidden)``, which :mod:`service.embedding` pools in numpy.

    ``int8`` other than ``none`` names a form of :data:`service.quantization.MODES`: the float32 graph is
    quantized with the model's calibrated ranges (``quantization.json``) into
    ``<same folder>/<stem>.int8-<mode>-<ranges digest>.onnx``, built once.

    Raises:
        ExportError: no shipped graph and no way to export one, or the int8 graph cannot be built.
    """
    fp32, target, spec = _graph_paths(source, cache_dir, task, int8)
    if source.onnx_path is None and not fp32.is_file():
        export_onnx(source.path, fp32, task=task)
    if int8 == "none":
        return fp32
    from service.quantization import build_int8

    try:
        if not target.is_file():
            logger.info("building the %s int8 graph of %s at %s", int8, source.model_id, target)
            build_int8(fp32, target, int8, spec)
    except (ValueError, KeyError) as exc:
        raise ExportError(f"int8 ({int8}) graph of {source.model_id}: {exc}") from exc
    return target


def onnx_path_for(source: ModelSource, cache_dir: Path, task: str = "sequence-classification",
                  int8: str = "none") -> Path:
    """Where :func:`onnx_for` puts (or finds) that graph, without building it; the file may not exist yet.

    Raises:
        ExportError: no shipped graph and no torch weights, or the model's ``quantization.json`` is invalid.
    """
    return _graph_paths(source, cache_dir, task, int8)[1]


def _graph_paths(source: ModelSource, cache_dir: Path, task: str, int8: str):
    """``(float32 graph, graph of form int8, quantization spec)`` paths of :func:`onnx_for`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; one of {TASKS}")
    if source.onnx_path is not None:
        fp32 = source.onnx_path
        derived_dir = Path(cache_dir) / "onnx" / f"shipped-{_path_key(fp32)}"
    else:
        if not source.has_torch_weights:
            raise ExportError(f"{source.path} has neither an ONNX graph nor torch weights to export")
        fp32 = Path(cache_dir) / "onnx" / source.fingerprint() / _FILE_NAMES[task]
        derived_dir = fp32.parent
    if int8 == "none":
        return fp32, fp32, None
    try:
        spec = source.quantization()
    except (ValueError, KeyError) as exc:
        raise ExportError(f"int8 ({int8}) graph of {source.model_id}: {exc}") from exc
    return fp32, derived_dir / f"{fp32.stem}.int8-{int8}-{spec.digest() if spec else 'nocal'}.onnx", spec


def _path_key(path: Path) -> str:
    import hashlib

    stat = Path(path).stat()
    return hashlib.sha256(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


#: Values of ``USE_TORCH`` with which transformers uses torch (``transformers.utils.import_utils``).
_TORCH_ON = {"1", "ON", "YES", "TRUE", "AUTO"}


def torch_disabled() -> bool:
    """Whether this process runs transformers without torch (``USE_TORCH`` set to anything but 1/on/yes/true/auto).

    ``python -m service`` sets ``USE_TORCH=0`` for every engine but ``torch``: the tokenizers are all the serving
    process needs of transformers, and importing transformers with torch costs about 10 s and 400 MB there
    (measured in docs/speed_startup.md). Exports then run in a child process (:func:`export_onnx`).
    """
    return os.environ.get("USE_TORCH", "AUTO").upper() not in _TORCH_ON


def torch_env() -> dict[str, str]:
    """This process's environment for a child interpreter that imports this ``service`` package and needs
    transformers with torch: ``USE_TORCH`` removed, the package's root first on ``PYTHONPATH``."""
    import service

    env = {k: v for k, v in os.environ.items() if k != "USE_TORCH"}
    root = str(Path(service.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def export_onnx(model_dir: Path, target: Path, *, opset: int = OPSET, task: str = "sequence-classification") -> Path:
    """Export the model at ``model_dir`` to ``target`` (float32).

    Inputs are ``input_ids``, ``attention_mask`` and, when the model takes it, ``token_type_ids``,
    each int64 ``(batch, seq_len)`` with both axes dynamic. For ``sequence-classification``
    (``AutoModelForSequenceClassification``) the output is ``logits`` ``(batch, n_classes)``; for
    ``sentence-embedding`` it is ``sentence_embedding`` ``(batch, hidden)``: the encoder with its
    pooling and L2 normalisation inside the graph (:class:`service.pooling.SentenceEmbedder`).
    Written to a temporary file and renamed, so a crash leaves no half file.

    In a process that runs transformers without torch (:func:`torch_disabled`, the serving process of
    ``python -m service``) the export runs in a child interpreter (``python -m service.onnx_export``) with torch.

    Raises:
        ExportError: torch/transformers missing or the exporter failed.
    """
    if torch_disabled():
        return _export_in_child(model_dir, target, opset=opset, task=task)
    try:
        import inspect

        import torch
        from transformers import AutoModelForSequenceClassification
    except ImportError as exc:
        raise ExportError(
            "exporting ONNX needs torch and transformers (pip install '.[torch]'), or give a model directory "
            "that already holds model.onnx"
        ) from exc
    logger.info("exporting %s (%s) to ONNX (opset %d) at %s", model_dir, task, opset, target)
    if task == "sentence-embedding":
        from service.pooling import sentence_embedder

        model = sentence_embedder(model_dir)
        accepted = inspect.signature(model.encoder.forward).parameters
        output = "sentence_embedding"
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
        accepted = inspect.signature(model.forward).parameters
        output = "logits"
    names = [n for n in INPUT_NAMES if n in accepted]
    dummy = tuple(torch.ones((2, 16), dtype=torch.int64) for _ in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {output: {0: "batch"}}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.stem + f".{os.getpid()}.tmp.onnx")
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # the TorchScript exporter is deprecated but chosen on purpose (opset 14, see module docstring)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, dummy, str(tmp), input_names=names, output_names=[output],
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX export of {model_dir} failed: {exc}") from exc
    os.replace(tmp, target)
    return target


def _export_in_child(model_dir: Path, target: Path, *, opset: int, task: str) -> Path:
    import subprocess
    import sys

    logger.info("exporting %s (%s) to ONNX in a child process (this one runs transformers without torch)",
                model_dir, task)
    proc = subprocess.run([sys.executable, "-m", "service.onnx_export", str(model_dir), str(target), task, str(opset)],
                          env=torch_env(), capture_output=True, text=True)
    if proc.returncode != 0 or not Path(target).is_file():
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise ExportError(f"ONNX export of {model_dir} failed in the export process: {last}")
    return Path(target)


_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "MatMulInteger", "QLinearConv",
              "DynamicQuantizeLinear", "ConvInteger"}


_MATMUL_OPS = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "DequantizeLinear"}


def inspect_onnx(onnx_path: Path) -> dict:
    """Cached :func:`_inspect_onnx` (keyed by path, size and modification time)."""
    stat = Path(onnx_path).stat()
    return dict(_inspect_cached(str(onnx_path), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _inspect_cached(path: str, size: int, mtime_ns: int) -> tuple:
    return tuple(_inspect_onnx(Path(path)).items())


def _inspect_onnx(onnx_path: Path) -> dict:
    """Sparsity and quantization of a graph, measured from its initializers and nodes.

    Returns:
        ``{"sparsity": float, "quantization": str, "weight_params": int}``: sparsity is the fraction of
        exact zeros over the 2-D weight initializers that feed MatMul/Gemm or their quantized forms (the Linear
        layers, not the embedding tables); a quantized weight counts as zero where it equals its zero point
        (128 for the uint8 weights of the ``integer`` form). quantization is ``"int8"`` when quantize /
        dequantize or integer matmul nodes are present, else ``"none"``.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    initializers = {init.name: init for init in model.graph.initializer}
    zero_points: dict[str, int] = {}
    matmul_inputs = set()
    for node in model.graph.node:
        if node.op_type not in _MATMUL_OPS:
            continue
        matmul_inputs.update(node.input)
        zp_index = {"MatMulInteger": (1, 3), "DequantizeLinear": (0, 2)}.get(node.op_type)
        if zp_index and len(node.input) > zp_index[1] and node.input[zp_index[1]] in initializers:
            zp = numpy_helper.to_array(initializers[node.input[zp_index[1]]])
            if zp.size and np.all(zp == zp.flat[0]):
                zero_points[node.input[zp_index[0]]] = int(zp.flat[0])
    zeros = total = 0
    for init in model.graph.initializer:
        if init.name in matmul_inputs and len(init.dims) == 2 and min(init.dims) > 1:
            array = numpy_helper.to_array(init)
            zeros += int(np.count_nonzero(array == zero_points.get(init.name, 0)))
            total += array.size
    ops = {node.op_type for node in model.graph.node}
    return {"sparsity": round(zeros / total, 4) if total else 0.0,
            "quantization": "int8" if ops & _QUANT_OPS else "none",
            "weight_params": total}


if __name__ == "__main__":  # python -m service.onnx_export MODEL_DIR TARGET TASK OPSET (see _export_in_child)
    import sys

    logging.basicConfig(level=logging.WARNING)
    try:
        export_onnx(Path(sys.argv[1]), Path(sys.argv[2]), task=sys.argv[3], opset=int(sys.argv[4]))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
