"""``engine=auto``'s measurement, remembered: time the candidate engines once per key, in a child process.

What decides which engine is faster for a model is the CPU (model name and instruction-set flags), the
engine versions (onnxruntime, deepsparse), the graph each engine would run (content hash of the file, which
also captures the quantization form), the threads, and the batch rows and sequence lengths timed. Those facts
form the *key* (:func:`selection_key`); the measurement is stored as ``<cache_dir>/engine_selection/<key
digest>.json`` and a later start that finds its key reuses the choice and builds only the winner
(:func:`remembered_choice`).

A new measurement (:func:`measure_in_child`) runs in a child process started with ``multiprocessing``'s
``spawn`` method: the child builds every candidate (exporting and quantizing graphs if needed), times each on
the same synthetic batches (:func:`service.engines.measure_rate`) and exits, so the memory of the engines that
lose (DeepSparse's compiled buckets, torch from an ONNX export) goes back to the system instead of staying in
the server. DeepSparse compiles only the buckets the timing needs there (``deferred``); the serving process
compiles its buckets (``ZSC_DEEPSPARSE_COMPILE``) only when DeepSparse won.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: Candidates ``auto`` times, in this order (the torch engine is only a fallback when neither builds).
CANDIDATES = ("deepsparse", "onnxruntime")
#: Version of the key and record layout: a changed measurement procedure invalidates old records.
SELECTION_FORMAT = 1
SELECTION_DIR = "engine_selection"


def cpu_facts() -> dict:
    """``{"model": str, "flags": [str, ...] (sorted), "cores": int}`` of this machine (``/proc/cpuinfo``;
    ``platform.processor()`` and no flags where it is not readable); ``cores`` is the CPUs this process may run
    on."""
    import platform

    model, flags = platform.processor() or platform.machine() or "?", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = sorted(set(line.split(":", 1)[1].split()))
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"model": model, "flags": flags, "cores": cores}


def engine_versions() -> dict[str, str | None]:
    """Installed versions of the candidate engines' packages (``None``: not installed), read from package
    metadata without importing them (importing deepsparse costs memory the server need not pay)."""
    versions: dict[str, str | None] = {}
    for kind, distributions in (("onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")),
                                ("deepsparse", ("deepsparse", "deepsparse-nightly"))):
        versions[kind] = None
        if importlib.util.find_spec(kind) is None:
            continue
        for name in distributions:
            try:
                versions[kind] = importlib.metadata.version(name)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            versions[kind] = "unknown"
    return versions


def file_digest(path: Path) -> str | None:
    """sha256 (16 hex characters) of a file's content, or ``None`` when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def selection_key(graphs: dict[str, Path | None], int8: dict[str, str], *, task: str, threads: int | None,
                  batch_rows: int, seq_lens: tuple[int, ...]) -> dict:
    """The facts that decide ``auto``'s choice (see the module docstring), as a JSON-able dict.

    Args:
        graphs: the graph file each candidate would run (``None``: it has none); hashed by content.
        int8: the graph form of each candidate (:func:`service.engines.int8_mode`).
        threads: the engine threads setting; ``None`` (all cores) is recorded as the cores this process may use.
        batch_rows, seq_lens: the shape of the timing batches.
    """
    cpu = cpu_facts()
    return {"format": SELECTION_FORMAT, "cpu": cpu["model"], "cpu_flags": cpu["flags"],
            "threads": threads or cpu["cores"], "engines": engine_versions(),
            "graphs": {kind: (file_digest(path) if path is not None else None) for kind, path in sorted(graphs.items())},
            "int8": dict(sorted(int8.items())), "task": task, "batch_rows": batch_rows, "seq_lens": list(seq_lens)}


def key_digest(key: dict) -> str:
    """sha256 (16 hex characters) of a key's canonical JSON: the record's file name."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def record_path(cache_dir: Path, key: dict) -> Path:
    """Where the measurement of ``key`` is stored."""
    return Path(cache_dir) / SELECTION_DIR / f"{key_digest(key)}.json"


def load_record(cache_dir: Path, key: dict) -> dict | None:
    """The stored measurement of ``key``, or ``None`` (none stored, unreadable, or stored for another key)."""
    path = record_path(cache_dir, key)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("key") != key or record.get("chosen") not in CANDIDATES:
        return None
    return record


def save_record(cache_dir: Path, key: dict, measurement: dict) -> Path:
    """Store ``measurement`` (``chosen``, ``rows_per_s``, ...) for ``key``, written atomically; its path."""
    path = record_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**measurement, "key": key}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (``2026-11-28T12:00:00+00:00``)."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _measure_candidates(source, options: dict, candidates: tuple[str, ...], batch_rows: int,
                        seq_lens: tuple[int, ...], log_level: int) -> dict:
    """Child-process body of :func:`measure_in_child`: build and time each candidate, close it, report."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s [auto timing]: %(message)s")
    from service.engines import EngineError, _build, measure_rate

    rates: dict[str, float] = {}
    errors: dict[str, str] = {}
    int8: dict[str, str] = {}
    for name in candidates:
        try:
            engine = _build(name, source, **{**options, "compile": "deferred"})  # only the timed buckets compile
        except EngineError as exc:
            errors[name] = str(exc)
            continue
        int8[name] = engine.int8
        try:
            rates[name] = round(measure_rate(engine, batch_size=batch_rows, seq_lens=seq_lens), 1)
        except Exception as exc:  # an engine that builds but cannot run is not a candidate
            errors[name] = f"failed its timing run: {exc}"
        finally:
            engine.close()
            del engine
    return {"rows_per_s": rates, "errors": errors, "int8": int8}


def measure_in_child(source, options: dict, candidates: tuple[str, ...], *, batch_rows: int,
                     seq_lens: tuple[int, ...]) -> dict:
    """Build and time ``candidates`` for ``source`` in a child process (see the module docstring).

    The child is ``python -m service.engines.selection`` (a fresh interpreter, like ``multiprocessing``'s
    ``spawn``, but independent of the parent's ``__main__``, so a script without a main guard can use ``auto``);
    its logs go to this process's stderr.

    Args:
        source: the :class:`~service.sources.ModelSource`.
        options: :func:`service.engines._build`'s keyword arguments (cache_dir, batch_size, max_length, ...).

    Returns:
        ``{"rows_per_s": {kind: rows/s}, "errors": {kind: message}, "int8": {kind: form}, "measure_seconds": s}``
        for the candidates that built and ran, and the reasons of those that did not.

    Raises:
        EngineError: the child process itself failed (crashed, or could not start).
    """
    import pickle
    import subprocess
    import sys
    import tempfile

    from service.engines.base import EngineError

    began = time.perf_counter()
    level = logging.getLogger("service").getEffectiveLevel()
    payload = pickle.dumps({"source": source, "options": options, "candidates": tuple(candidates),
                            "batch_rows": batch_rows, "seq_lens": tuple(seq_lens), "log_level": level})
    from service.onnx_export import torch_env

    env = torch_env()  # the same service package, and transformers with torch for the exports it may run
    with tempfile.TemporaryDirectory(prefix="zsc-auto-") as tmp:
        out = Path(tmp) / "result.json"
        try:
            proc = subprocess.run([sys.executable, "-m", "service.engines.selection", str(out)], input=payload,
                                  env=env, stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else None)
        except OSError as exc:
            raise EngineError(f"auto: could not start the timing process ({exc})") from exc
        if proc.returncode != 0 or not out.is_file():
            raise EngineError(f"auto: the timing process failed (exit code {proc.returncode}; its log is above)")
        result = json.loads(out.read_text(encoding="utf-8"))
    result["measure_seconds"] = round(time.perf_counter() - began, 1)
    return result


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


def _child_main(result_path: str) -> None:
    """Entry of the timing process: read the pickled request on stdin, write the JSON result to ``result_path``."""
    import pickle
    import sys

    request = pickle.loads(sys.stdin.buffer.read())
    result = _measure_candidates(request["source"], request["options"], request["candidates"], request["batch_rows"],
                                 request["seq_lens"], request["log_level"])
    Path(result_path).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    import sys

    _child_main(sys.argv[1])
