"""Compact storage of a pruned model: bitmask-compressed sparse weights, with tensors shared with its dense base.

A pruned model saved as a plain ``model.safetensors`` is as large as the dense one (zeros are stored). This
format stores each sparse 2-D weight as its non-zero values (in row-major order) plus a packed bitmask of
their positions - the layout of Neural Magic's ``sparse-bitmask`` compression in ``compressed-tensors`` -
and leaves out tensors that are bit-identical to the dense model it was pruned from (the word embeddings,
frozen during pruning, are half of a MiniLM's parameters). At 80% sparsity a MiniLM-L6 teacher shrinks from
45 MB (fp16) to about 7 MB next to its base.

Files of a compact directory:

- ``sparse_model.json``: ``{"format": "bitmask", "version": 1, "base_model": <path of the dense base,
  relative to this directory>, "shared": {name: sha256 of the tensor's bytes}, "dtype": "float16"}``
- ``sparse_weights.safetensors``: ``<name>.values`` (1-D, non-zeros), ``<name>.bitmask`` (uint8,
  ``np.packbits`` of the flattened mask) and ``<name>.shape`` (int64) for compressed tensors; other
  tensors as they are.
- ``config.json``; tokenizer files only where they differ from the base's (the base's are used otherwise).

:func:`materialize` rebuilds an ordinary Hugging Face directory (``model.safetensors``) in the cache - the base's
files first, this directory's on top - so every loader downstream (ONNX export, the torch engine,
``from_pretrained``) works unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

FORMAT_FILE = "sparse_model.json"
WEIGHTS_FILE = "sparse_weights.safetensors"
#: Files copied as they are into a materialized directory (all but the compact weights).
_SKIP = {FORMAT_FILE, WEIGHTS_FILE, "model.safetensors", "pytorch_model.bin"}


class SparseCheckpointError(RuntimeError):
    """A compact directory that cannot be read: missing base model, a shared tensor that changed, bad files."""


def is_compact(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a compact sparse checkpoint (``sparse_model.json``)."""
    return (Path(model_dir) / FORMAT_FILE).is_file()


def tensor_digest(array: np.ndarray) -> str:
    """sha256 of a tensor's dtype, shape and bytes (16 hex characters)."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def compress(array: np.ndarray) -> dict[str, np.ndarray]:
    """``{"values", "bitmask", "shape"}`` of an array: non-zeros in row-major order and their packed mask."""
    mask = array.reshape(-1) != 0
    return {"values": array.reshape(-1)[mask], "bitmask": np.packbits(mask), "shape": np.asarray(array.shape, np.int64)}


def decompress(values: np.ndarray, bitmask: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Inverse of :func:`compress`.

    Raises:
        SparseCheckpointError: the mask and the values disagree in count.
    """
    size = int(np.prod(shape))
    mask = np.unpackbits(bitmask, count=size).astype(bool)
    if int(mask.sum()) != values.size:
        raise SparseCheckpointError(f"bitmask marks {int(mask.sum())} non-zeros but {values.size} values are stored")
    out = np.zeros(size, dtype=values.dtype)
    out[mask] = values
    return out.reshape(tuple(int(d) for d in shape))


def save_compact(tensors: dict[str, np.ndarray], output_dir: Path, *, base_dir: Path,
                 dtype: str = "float16", min_sparsity: float = 0.3) -> dict:
    """Write ``tensors`` (a model's state dict as numpy arrays) as a compact checkpoint in ``output_dir``.

    Tensors equal (bit for bit, after the cast to ``dtype``) to the same-named tensor of the dense model in
    ``base_dir`` are not stored; 2-D tensors with at least ``min_sparsity`` zeros are bitmask-compressed.

    Returns:
        ``{"stored_bytes", "dense_bytes", "shared": [...], "compressed": [...]}``.

    Raises:
        SparseCheckpointError: ``base_dir`` holds no ``model.safetensors``.
    """
    from safetensors.numpy import save_file

    output_dir, base_dir = Path(output_dir), Path(base_dir)
    base = _read_safetensors(base_dir)
    out: dict[str, np.ndarray] = {}
    shared, compressed = {}, []
    dense_bytes = 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array.astype(dtype) if array.dtype.kind == "f" else array)
        dense_bytes += array.nbytes
        if name in base and base[name].shape == array.shape and np.array_equal(base[name].astype(array.dtype), array):
            shared[name] = tensor_digest(base[name])
            continue
        if array.ndim == 2 and np.mean(array == 0) >= min_sparsity:
            for key, part in compress(array).items():
                out[f"{name}.{key}"] = part
            compressed.append(name)
        else:
            out[name] = array
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / (WEIGHTS_FILE + ".tmp")
    save_file(out, str(tmp))
    os.replace(tmp, output_dir / WEIGHTS_FILE)
    meta = {"format": "bitmask", "version": 1, "base_model": os.path.relpath(base_dir.resolve(), output_dir.resolve()),
            "shared": shared, "dtype": dtype}
    (output_dir / FORMAT_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for stale in ("model.safetensors", "pytorch_model.bin"):
        (output_dir / stale).unlink(missing_ok=True)
    return {"stored_bytes": (output_dir / WEIGHTS_FILE).stat().st_size, "dense_bytes": dense_bytes,
            "shared": sorted(shared), "compressed": compressed}


def load_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of a compact checkpoint, decompressed and with the shared ones read from its base.

    Raises:
        SparseCheckpointError: the base model is missing, or a shared tensor no longer matches its digest
            (the base was rebuilt after this model was pruned from it).
    """
    from safetensors.numpy import load_file

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / FORMAT_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != "bitmask" or meta.get("version") != 1:
        raise SparseCheckpointError(f"{model_dir / FORMAT_FILE}: unsupported format {meta.get('format')!r} "
                                    f"version {meta.get('version')!r}")
    stored = load_file(str(model_dir / WEIGHTS_FILE))
    tensors: dict[str, np.ndarray] = {}
    for key in stored:
        if key.endswith(".bitmask"):
            name = key[: -len(".bitmask")]
            tensors[name] = decompress(stored[name + ".values"], stored[key], stored[name + ".shape"])
        elif not key.endswith((".values", ".shape")):
            tensors[key] = stored[key]
    if meta["shared"]:
        base_dir = (model_dir / meta["base_model"]).resolve()
        try:
            base = _read_safetensors(base_dir)
        except SparseCheckpointError as exc:
            raise SparseCheckpointError(f"{model_dir} shares tensors with its dense base model, which is not "
                                        f"readable: {exc}") from None
        for name, digest in meta["shared"].items():
            if name not in base or tensor_digest(base[name]) != digest:
                raise SparseCheckpointError(f"{model_dir}: tensor {name!r} of the base model {base_dir} is missing or "
                                            "differs from the one this model was pruned with; rebuild it with "
                                            "python -m train.sparsify against that base")
            tensors[name] = base[name].astype(meta["dtype"]) if base[name].dtype.kind == "f" else base[name]
    return tensors


def fingerprint(model_dir: Path) -> str:
    """Content hash (16 hex characters) of a compact checkpoint: its config, format file and weights."""
    digest = hashlib.sha256()
    for name in ("config.json", FORMAT_FILE, WEIGHTS_FILE):
        digest.update(name.encode())
        digest.update((Path(model_dir) / name).read_bytes())
    return digest.hexdigest()[:16]


def materialize(model_dir: Path, cache_dir: Path) -> Path:
    """An ordinary Hugging Face directory for a compact checkpoint: ``<cache_dir>/materialized/<fingerprint>/``.

    Built once (written to a temporary directory and renamed, so a crash leaves nothing half-written);
    later calls return the existing directory.

    Raises:
        SparseCheckpointError: see :func:`load_tensors`.
    """
    from safetensors.numpy import save_file

    model_dir = Path(model_dir)
    target = Path(cache_dir) / "materialized" / fingerprint(model_dir)
    if (target / "model.safetensors").is_file():
        return target
    tensors = load_tensors(model_dir)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    base_dir = base_model_dir(model_dir)
    for source in ([base_dir] if base_dir is not None else []) + [model_dir]:  # the compact directory's files win
        for item in source.iterdir():
            if item.is_file() and item.name not in _SKIP and item.suffix != ".md":
                shutil.copy2(item, tmp / item.name)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    try:
        os.replace(tmp, target)
    except OSError:  # another process materialized it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def base_model_dir(model_dir: Path) -> Path | None:
    """The dense base directory a compact checkpoint names (``None`` when it names none)."""
    meta = json.loads((Path(model_dir) / FORMAT_FILE).read_text(encoding="utf-8"))
    return (Path(model_dir) / meta["base_model"]).resolve() if meta.get("base_model") else None


def _read_safetensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise SparseCheckpointError(f"{path} not found")
    return load_file(str(path))
