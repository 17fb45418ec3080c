"""int8 quantization of an encoder's Linear layers in an ONNX graph: static (QDQ) and dynamic.

Why this module and not ``onnxruntime.quantization``: DeepSparse 1.8 pins ``onnx<1.15``, and
``onnxruntime.quantization`` of any recent ONNX Runtime fails to import with it (it reads
``TensorProto.INT4``, added in onnx 1.16). The service needs DeepSparse and must build the int8 graphs
itself at load time (the committed model is the compact sparse checkpoint, the graphs are derived files),
so the two passes it needs are implemented here with the ``onnx`` package alone. They follow ONNX Runtime's
own quantizer (``onnxruntime/python/tools/quantization``: ``qdq_quantizer.py``, ``onnx_quantizer.py``) in
what they emit, and quantize only the Linear layers (a ``MatMul`` whose second input is a 2-D weight
initializer); attention score matmuls, LayerNorm, GELU and softmax stay float32.

- :func:`quantize_static` inserts ``QuantizeLinear -> DequantizeLinear`` on each Linear input (uint8,
  asymmetric, with a range calibrated offline: :func:`calibrate`) and stores the weight as int8
  (symmetric, per output channel by default) behind a ``DequantizeLinear``. DeepSparse and ONNX Runtime
  fuse these QDQ patterns into integer kernels.
- :func:`quantize_dynamic` replaces each Linear ``MatMul`` by ``DynamicQuantizeLinear`` (activation
  range measured per call) + ``MatMulInteger`` + rescale, the pattern ONNX Runtime fuses into
  ``DynamicQuantizeMatMul``. No calibration.
- With ``gather=True`` (:attr:`QuantizationSpec.gather`, set for the tiny students, whose embedding tables are
  almost all of their weights), both passes also store every embedding table read by a ``Gather`` (a 2-D float
  initializer as its data input) in int8 with one scale per row: :func:`quantize_gather_tables`.

Exact zeros of a pruned weight stay exactly zero (``round(0 / scale) = 0``), so sparsity survives.
``reduce_range`` uses 7-bit weights, which avoids the int16 saturation of the ``u8s8`` instruction sequence
on x86 CPUs without VNNI (ONNX Runtime's quantization docs, "When and why do I need to try U8U8").
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

#: Ranges of the activations, keyed by tensor name: ``(low, high)`` in float.
Ranges = dict[str, tuple[float, float]]

QUANTIZATION_FILE = "quantization.json"
#: Version of the passes below: part of the derived graphs' cache key, so a changed pass rebuilds them.
PASSES_VERSION = 2
#: int8 graph forms: static QDQ, static integer (SparseML's deployment form, for DeepSparse), dynamic.
MODES = ("qdq", "integer", "dynamic")


@dataclass(frozen=True)
class QuantizationSpec:
    """What ``quantization.json`` holds next to a model: calibrated activation ranges and the int8 form each
    engine runs (one of :data:`MODES`, or ``none``), chosen by measurement (``python -m train.quantize``).

    Attributes:
        ranges: activation ranges for :func:`quantize_static`, keyed by the fp32 graph's tensor names.
        engines: ``{"deepsparse": "integer", "onnxruntime": "qdq"}``-style choice per engine.
        per_channel: per-output-channel weight scales.
        reduce_range: 7-bit weights (see the module docstring).
        calibration: how the ranges were measured (method, pairs, source), for the record.
        gather: also store the embedding tables of ``Gather`` nodes in int8 (:func:`quantize_gather_tables`);
            off for the teachers, whose int8 accuracy was measured without it.
    """

    ranges: Ranges
    engines: dict[str, str] = field(default_factory=lambda: {"deepsparse": "integer", "onnxruntime": "qdq"})
    per_channel: bool = True
    reduce_range: bool = False
    calibration: dict = field(default_factory=dict)
    gather: bool = False

    def mode_for(self, engine: str) -> str:
        """int8 mode of ``engine`` (``none`` when the spec does not name it)."""
        return self.engines.get(engine, "none")

    def save(self, model_dir: Path, *, path: Path | None = None) -> Path:
        """Write the spec as ``model_dir/quantization.json`` (or to ``path``)."""
        path = Path(path) if path is not None else Path(model_dir) / QUANTIZATION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["ranges"] = {k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()}
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, model_dir: Path) -> "QuantizationSpec | None":
        """The spec stored in ``model_dir``, or ``None`` when there is none.

        Raises:
            ValueError: the file exists but names an unknown mode.
        """
        path = Path(model_dir) / QUANTIZATION_FILE
        return cls.load_file(path) if path.is_file() else None

    @classmethod
    def load_file(cls, path: Path) -> "QuantizationSpec":
        """The spec in the JSON file ``path``.

        Raises:
            ValueError: the file names an unknown mode.
        """
        path = Path(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        spec = cls(ranges={k: (float(v[0]), float(v[1])) for k, v in data["ranges"].items()},
                   engines=dict(data.get("engines", {})), per_channel=bool(data.get("per_channel", True)),
                   reduce_range=bool(data.get("reduce_range", False)), calibration=dict(data.get("calibration", {})),
                   gather=bool(data.get("gather", False)))
        bad = {e: m for e, m in spec.engines.items() if m not in (*MODES, "none")}
        if bad:
            raise ValueError(f"{path}: unknown int8 mode(s) {bad}; use one of {', '.join(MODES)} or none")
        return spec

    def digest(self) -> str:
        """Content hash (8 hex characters) of the ranges and options: the cache key of derived graphs."""
        import hashlib

        key = {"ranges": sorted((k, round(lo, 8), round(hi, 8)) for k, (lo, hi) in self.ranges.items()),
               "per_channel": self.per_channel, "reduce_range": self.reduce_range, "passes": PASSES_VERSION}
        if self.gather:  # only when set, so the digests (and cached graphs) of specs without it stay as they were
            key["gather"] = True
        payload = json.dumps(key)
        return hashlib.sha256(payload.encode()).hexdigest()[:8]


def embedded_spec_path(fingerprint: str) -> Path:
    """Where a spec shipped with the package for a model of that content fingerprint lives."""
    import importlib.resources

    return Path(str(importlib.resources.files("service").joinpath("models/quantization"))) / f"{fingerprint}.json"


#: CPU flags of x86 instructions that multiply uint8 by int8 and accumulate in int32 (``vpdpbusd``): AVX-512 VNNI,
#: AVX-VNNI, AMX.
INT32_ACCUMULATING_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def saturating_int8_cpu(flags: Iterable[str] | None = None, machine: str | None = None) -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernels can saturate on this CPU: x86 without VNNI, where they pair
    products with ``vpmaddubsw`` into an int16 that 8-bit weights overflow (ONNX Runtime's quantization docs, "When
    and why do I need to try U8U8?"). Measured here on an AMD EPYC with AVX2 only: all-mpnet-base-v2's QDQ graph
    with 8-bit weights classified AG News at 0.234 against 0.768 in float32, and at 0.748 with 7-bit weights; the
    packaged MiniLM's was as faithful with 8 bits as with 7. ``python -m train.quantize`` tries 7-bit weights on
    such a CPU when the 8-bit graph strays from float32 (:attr:`QuantizationSpec.reduce_range`).

    Args:
        flags: the CPU's flags (read from ``/proc/cpuinfo`` when ``None``); machine: ``platform.machine()``.
    """
    import platform

    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False  # ARM's int8 dot products accumulate in int32
    if flags is None:
        from service.cpu import cpu_facts

        flags = cpu_facts()["flags"]
    return not INT32_ACCUMULATING_FLAGS & set(flags)


def build_int8(src: Path, dst: Path, mode: str, spec: "QuantizationSpec | None") -> Path:
    """The int8 graph of ``mode`` (:data:`MODES`) for the fp32 graph ``src``, written to ``dst``.

    Raises:
        ValueError: unknown mode, or a static mode without a spec (no calibrated ranges).
    """
    reduce_range = bool(spec and spec.reduce_range)
    if mode == "dynamic":
        return quantize_dynamic(src, dst, per_channel=spec.per_channel if spec else True,
                                reduce_range=reduce_range, gather=bool(spec and spec.gather))
    if mode not in MODES:
        raise ValueError(f"unknown int8 mode {mode!r}; use one of {', '.join(MODES)}")
    if spec is None:
        raise ValueError(f"int8 mode {mode!r} needs calibrated activation ranges (quantization.json): run "
                         "python -m train.quantize on the model directory")
    return quantize_static(src, dst, spec.ranges, form=mode, per_channel=spec.per_channel,
                           reduce_range=reduce_range, gather=spec.gather)


def linear_matmuls(model) -> list:
    """``MatMul`` nodes whose second input is a 2-D float initializer (the Linear layers), in graph order."""
    from onnx import TensorProto

    weights = {init.name for init in model.graph.initializer if len(init.dims) == 2
               and init.data_type == TensorProto.FLOAT}
    return [node for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights]


def activation_names(model) -> list[str]:
    """The distinct first inputs of :func:`linear_matmuls` (q/k/v share one), in graph order."""
    return list(dict.fromkeys(node.input[0] for node in linear_matmuls(model)))


def calibrate(onnx_path: Path, feeds: Iterable[dict[str, np.ndarray]], *, method: str = "percentile",
              percentile: float = 99.999, samples_per_batch: int = 200_000, seed: int = 0) -> Ranges:
    """Activation ranges of every Linear input, measured by running the fp32 graph on ``feeds`` (ONNX Runtime).

    Args:
        onnx_path: the float32 graph.
        feeds: batches of graph inputs (``input_ids``, ``attention_mask``, ...), as the engines get them.
        method: ``minmax`` (the extremes seen) or ``percentile`` (the ``100 - p`` and ``p`` percentiles of the
            values seen, which ignores rare outliers; ONNX Runtime's ``CalibrationMethod.Percentile``).
        percentile: ``p`` for ``percentile``.
        samples_per_batch: values kept per tensor and batch for the percentile (drawn at random).

    Raises:
        ValueError: unknown method or no batches.
    """
    import onnx
    import onnxruntime as ort

    if method not in ("minmax", "percentile"):
        raise ValueError(f"unknown calibration method {method!r}; use minmax or percentile")
    model = onnx.load(str(onnx_path))
    names = activation_names(model)
    known = {o.name for o in model.graph.output}
    for name in names:
        if name not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    rng = np.random.default_rng(seed)
    lows = {n: np.inf for n in names}
    highs = {n: -np.inf for n in names}
    samples: dict[str, list[np.ndarray]] = {n: [] for n in names}
    batches = 0
    for feed in feeds:
        outputs = session.run(names, {k: v for k, v in feed.items() if k in inputs})
        mask = feed["attention_mask"].astype(bool)
        for name, value in zip(names, outputs):
            if value.ndim == 3 and value.shape[:2] == mask.shape:
                value = value[mask]  # padding positions are not real activations
            flat = value.reshape(-1)
            lows[name], highs[name] = min(lows[name], float(flat.min())), max(highs[name], float(flat.max()))
            if method == "percentile":
                take = flat if flat.size <= samples_per_batch else rng.choice(flat, samples_per_batch, replace=False)
                samples[name].append(take.astype(np.float32))
        batches += 1
    if not batches:
        raise ValueError("calibration needs at least one batch")
    if method == "minmax":
        return {n: (lows[n], highs[n]) for n in names}
    out = {}
    for n in names:
        values = np.concatenate(samples[n])
        out[n] = (float(np.percentile(values, 100 - percentile)), float(np.percentile(values, percentile)))
    return out


def _activation_qparams(low: float, high: float) -> tuple[np.float32, np.uint8]:
    """uint8 asymmetric scale and zero point covering ``[min(low, 0), max(high, 0)]``."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0 if high > low else 1.0
    zero_point = int(np.clip(round(-low / scale), 0, 255))
    return np.float32(scale), np.uint8(zero_point)


def _weight_qparams(weight: np.ndarray, *, per_channel: bool, reduce_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights and scales: per output column (axis 1 of a ``(in, out)`` MatMul weight) or one."""
    qmax = 63.0 if reduce_range else 127.0
    amax = np.abs(weight).max(axis=0) if per_channel else np.array(np.abs(weight).max())
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    quantized = np.clip(np.round(weight / scale), -qmax, qmax).astype(np.int8)
    return quantized, scale


def quantize_static(src: Path, dst: Path, ranges: Ranges, *, form: str = "qdq", per_channel: bool = True,
                    reduce_range: bool = False, gather: bool = False) -> Path:
    """Write a static int8 version of the fp32 graph ``src`` to ``dst`` (see the module docstring).

    Args:
        form: ``qdq`` (``QuantizeLinear -> DequantizeLinear`` on the input, an int8 weight behind a
            ``DequantizeLinear``, the float ``MatMul`` kept: ONNX Runtime fuses it), or ``integer``: the
            deployment form of Neural Magic's SparseML exporter (``MatMulAddToMatMulIntegerAddCastMul`` and
            ``InitializersToUint8``), which DeepSparse runs with its int8 kernels: ``QuantizeLinear ->
            MatMulInteger`` on a uint8 weight with zero point 128, the bias added in int32, then ``Cast`` and
            one ``Mul`` by ``input scale * weight scale`` (a vector with per-channel weight scales).
        per_channel: per-output-channel weight scales (SparseML's BERT recipes use per-tensor ones; per-channel
            keeps more accuracy, measured in ``train/sparsify.py``'s report).
        gather: also store the ``Gather`` embedding tables in int8 (:func:`quantize_gather_tables`).

    Raises:
        KeyError: ``ranges`` lacks an activation of a Linear layer (calibrated on another graph).
        ValueError: unknown ``form``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if form not in ("qdq", "integer"):
        raise ValueError(f"unknown static form {form!r}; use qdq or integer")
    model = onnx.load(str(src))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    missing = [n for n in activation_names(model) if n not in ranges]
    if missing:
        raise KeyError(f"no calibrated range for {len(missing)} activations, e.g. {missing[0]!r}: the ranges were "
                       "measured on another graph; recalibrate (python -m train.quantize)")
    weights = {name for name, init in initializers.items() if len(init.dims) == 2
               and init.data_type == TensorProto.FLOAT}
    consumers: dict[str, list] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append((index, node))
    graph_outputs = {o.name for o in graph.output}
    new_nodes, new_inits, quantized_inputs, folded = [], [], {}, set()
    for index, node in enumerate(graph.node):
        if index in folded:
            continue
        if node.op_type != "MatMul" or node.input[1] not in weights:
            new_nodes.append(node)
            continue
        x, w = node.input[0], node.input[1]
        scale, zp = _activation_qparams(*ranges[x])
        base = _safe(x)
        if x not in quantized_inputs:
            new_inits += [numpy_helper.from_array(np.array(scale), f"{base}_scale"),
                          numpy_helper.from_array(np.array(zp), f"{base}_zero_point")]
            new_nodes.append(helper.make_node("QuantizeLinear", [x, f"{base}_scale", f"{base}_zero_point"],
                                              [f"{base}_quantized"], name=f"{base}_QuantizeLinear"))
            if form == "qdq":
                new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale",
                                                                       f"{base}_zero_point"],
                                                  [f"{base}_dequantized"], name=f"{base}_DequantizeLinear"))
            quantized_inputs[x] = base
        weight = numpy_helper.to_array(initializers[w])
        q, w_scale = _weight_qparams(weight, per_channel=per_channel, reduce_range=reduce_range)
        wbase = _safe(w)
        if form == "qdq":
            new_inits += [numpy_helper.from_array(q, f"{wbase}_quantized"),
                          numpy_helper.from_array(w_scale, f"{wbase}_scale"),
                          numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), f"{wbase}_zero_point")]
            attrs = {"axis": 1} if per_channel else {}
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{wbase}_quantized", f"{wbase}_scale",
                                                                   f"{wbase}_zero_point"], [f"{wbase}_dequantized"],
                                              name=f"{wbase}_DequantizeLinear", **attrs))
            new_nodes.append(helper.make_node("MatMul", [f"{base}_dequantized", f"{wbase}_dequantized"],
                                              list(node.output), name=node.name))
            continue
        # integer form: uint8 weight (+128), int32 bias folded in when the MatMul feeds one Add with a constant
        out = node.output[0]
        rescale = (scale * w_scale).astype(np.float32)
        new_inits += [numpy_helper.from_array((q.astype(np.int32) + 128).astype(np.uint8), f"{wbase}_quantized"),
                      numpy_helper.from_array(np.array(128, np.uint8), f"{wbase}_zero_point"),
                      numpy_helper.from_array(np.asarray(rescale), f"{wbase}_rescale")]
        new_nodes.append(helper.make_node("MatMulInteger", [f"{base}_quantized", f"{wbase}_quantized",
                                                            f"{base}_zero_point", f"{wbase}_zero_point"],
                                          [f"{out}_int32"], name=f"{node.name}_quant"))
        users = consumers.get(out, [])
        add = users[0][1] if len(users) == 1 and users[0][1].op_type == "Add" and out not in graph_outputs else None
        bias_name = None
        if add is not None:
            other = add.input[1] if add.input[0] == out else add.input[0]
            if other in initializers and initializers[other].data_type == TensorProto.FLOAT:
                bias_name = other
        if bias_name is not None:
            bias = numpy_helper.to_array(initializers[bias_name])
            new_inits.append(numpy_helper.from_array(np.round(bias / rescale).astype(np.int32),
                                                     f"{_safe(bias_name)}_int32"))
            new_nodes += [
                helper.make_node("Add", [f"{out}_int32", f"{_safe(bias_name)}_int32"], [f"{out}_biased"],
                                 name=f"{node.name}_bias_add_quant"),
                helper.make_node("Cast", [f"{out}_biased"], [f"{out}_float"], to=TensorProto.FLOAT,
                                 name=f"{node.name}_cast"),
                helper.make_node("Mul", [f"{out}_float", f"{wbase}_rescale"], list(add.output),
                                 name=f"{node.name}_rescale_mul")]
            folded.add(users[0][0])
        else:
            new_nodes += [
                helper.make_node("Cast", [f"{out}_int32"], [f"{out}_float"], to=TensorProto.FLOAT,
                                 name=f"{node.name}_cast"),
                helper.make_node("Mul", [f"{out}_float", f"{wbase}_rescale"], [out], name=f"{node.name}_rescale_mul")]
    _replace(model, new_nodes, new_inits)
    if gather:
        quantize_gather_tables(model)
    return _save(model, dst)


def quantize_dynamic(src: Path, dst: Path, *, per_channel: bool = True, reduce_range: bool = False,
                     gather: bool = False) -> Path:
    """Write a dynamic int8 version of the fp32 graph ``src`` to ``dst`` (see the module docstring); ``gather``:
    also store the ``Gather`` embedding tables in int8 (:func:`quantize_gather_tables`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    new_nodes, new_inits, done = [], [], {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers and len(initializers[node.input[1]].dims) == 2 \
                and initializers[node.input[1]].data_type == onnx.TensorProto.FLOAT:
            x, w = node.input[0], node.input[1]
            base = _safe(x)
            if x not in done:
                new_nodes.append(helper.make_node("DynamicQuantizeLinear", [x], [f"{base}_quantized", f"{base}_scale",
                                                                                f"{base}_zero_point"],
                                                  name=f"{base}_DynamicQuantizeLinear"))
                done[x] = base
            weight = numpy_helper.to_array(initializers[w])
            q, scale = _weight_qparams(weight, per_channel=per_channel, reduce_range=reduce_range)
            wbase, out = _safe(w), node.output[0]
            new_inits += [numpy_helper.from_array(q, f"{wbase}_quantized"),
                          numpy_helper.from_array(scale, f"{wbase}_scale"),
                          numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{wbase}_zero_point")]
            new_nodes += [
                helper.make_node("MatMulInteger", [f"{base}_quantized", f"{wbase}_quantized", f"{base}_zero_point",
                                                   f"{wbase}_zero_point"], [f"{out}_int32"], name=f"{node.name}_quant"),
                helper.make_node("Cast", [f"{out}_int32"], [f"{out}_float"], to=TensorProto.FLOAT,
                                 name=f"{node.name}_cast"),
                helper.make_node("Mul", [f"{base}_scale", f"{wbase}_scale"], [f"{out}_scale"],
                                 name=f"{node.name}_scales"),
                helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], list(node.output), name=f"{node.name}_rescale"),
            ]
        else:
            new_nodes.append(node)
    _replace(model, new_nodes, new_inits)
    if gather:
        quantize_gather_tables(model)
    return _save(model, dst)


def quantize_gather_tables(model) -> list[str]:
    """Store every embedding table of ``model`` in int8, in place; returns the tables' names.

    A table is the data input of a ``Gather`` (axis 0) that is a 2-D float initializer ``(rows, dim)``. Each row
    gets its own symmetric scale ``max|row| / 127``, as PyTorch's quantized ``Embedding`` keeps one scale per row
    (``torch.ao.nn.quantized.Embedding``, ``per_channel_affine_float_qparams`` on axis 0): rows of a word table
    differ in norm by an order of magnitude, so one scale for the table would flatten the small ones. The graph
    then gathers the int8 rows and their scales with the same indices and rescales only the rows it read:
    ``Gather(int8 table) -> Cast(float) -> Mul(Gather(scales (rows, 1)))``, the same result as a
    ``DequantizeLinear`` before the ``Gather`` (how ONNX Runtime's quantizer writes a quantized ``Gather``) without
    dequantizing the whole table on each call. Storage: ``rows * dim`` bytes plus ``4 * rows`` for the scales,
    about a quarter of float32's ``4 * rows * dim``. Rounding error: at most half a step, ``max|row| / 254``
    per element.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes, new_inits, done = [], [], {}
    for node in graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        table = node.input[0] if node.op_type == "Gather" else None
        init = initializers.get(table) if table else None
        if init is None or axis != 0 or len(init.dims) != 2 or init.data_type != TensorProto.FLOAT:
            nodes.append(node)
            continue
        base = _safe(table)
        if table not in done:
            weight = numpy_helper.to_array(init).astype(np.float32)
            amax = np.abs(weight).max(axis=1, keepdims=True)
            scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
            quantized = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
            new_inits += [numpy_helper.from_array(quantized, f"{base}_int8"),
                          numpy_helper.from_array(scale, f"{base}_row_scale")]
            done[table] = base
        out, index = node.output[0], node.input[1]
        nodes += [helper.make_node("Gather", [f"{base}_int8", index], [f"{out}_int8"], name=f"{node.name}_int8"),
                  helper.make_node("Gather", [f"{base}_row_scale", index], [f"{out}_row_scale"],
                                   name=f"{node.name}_row_scale"),
                  helper.make_node("Cast", [f"{out}_int8"], [f"{out}_float"], to=TensorProto.FLOAT,
                                   name=f"{node.name}_cast"),
                  helper.make_node("Mul", [f"{out}_float", f"{out}_row_scale"], [out], name=f"{node.name}_rescale")]
    if done:
        _replace(model, nodes, new_inits)
    return list(done)


def _safe(name: str) -> str:
    return name.replace("/", "_").replace(":", "_").strip("_") or "t"


def _replace(model, nodes: list, new_inits: list) -> None:
    """Swap in the new node list, drop the float weights no node reads any more, add the new initializers."""
    used = {i for node in nodes for i in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + new_inits)


def _save(model, dst: Path) -> Path:
    import onnx

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    tmp = dst.with_name(dst.stem + f".{os.getpid()}.tmp.onnx")
    onnx.save(model, str(tmp))
    os.replace(tmp, dst)
    return dst
