"""``engine=auto``'s measurement, remembered: what each candidate engine costs and how fast it runs, measured once
per key in a child process, and the choice of the fastest engine whose cost fits the start-up and memory budget.

What decides which engine is faster for a model is the CPU (model name and instruction-set flags), the
engine versions (onnxruntime, deepsparse), the graph each engine would run (content hash of the file, which
also captures the quantization form), the threads, and the batch shapes timed. Those facts
form the *key* (:func:`selection_key`); the measurement is stored as ``<cache_dir>/engine_selection/<key
digest>.json`` and a later start that finds its key reuses it and builds only the chosen engine.

**Cost.** A start pays for the engine it builds: ONNX Runtime creates one session; DeepSparse compiles one engine
per (batch, sequence) bucket, at every start (``ZSC_DEEPSPARSE_COMPILE=startup``) or as traffic reaches them, and
each compiled bucket holds its own memory (issue 23: 22 buckets, a 69 s warm start and 2.55 GB). The child measures
each candidate's cost (:func:`engine_cost`: seconds to build, resident memory; for DeepSparse, the two smallest
buckets' compilations, projected over every bucket) and the serving process keeps only the candidates whose
projected warm start and memory fit its :class:`Budget` (``ZSC_MAX_START_S``, ``ZSC_MAX_RSS_MB``, shared by the
models it loads); of those, the fastest (:func:`choose`). A candidate that cannot fit is not timed at all (the
timing, and DeepSparse's compilation of the timed buckets, are most of a cold start), and when only one fits
nothing is timed. The budget is not part of the key: a start with a larger budget, under which a candidate the
record did not time could fit, measures again.

A new measurement (:func:`measure_in_child`) runs in a child process (``python -m service.engines.selection``):
the child builds every candidate (exporting and quantizing graphs if needed), measures, and exits, so the memory
of the engines that lose (DeepSparse's compiled buckets, torch from an ONNX export) goes back to the system
instead of staying in the server.
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
from dataclasses import asdict
from pathlib import Path

from service.cpu import cpu_facts
from service.engines.base import DEEPSPARSE_TERMS, Budget, licence

logger = logging.getLogger(__name__)
__all__ = ["DEEPSPARSE_TERMS", "Budget", "choose", "engine_cost", "licence", "measure_in_child", "service_budget"]

#: Candidates ``auto`` measures, in this order (the cheaper to build first; the torch engine is only a fallback
#: when neither builds).
CANDIDATES = ("onnxruntime", "deepsparse")
#: Version of the key and record layout: a changed measurement procedure invalidates old records.
#: 2: costs measured and budgets applied (issue 23); batch shapes with partial batches.
SELECTION_FORMAT = 2
SELECTION_DIR = "engine_selection"
_DISPLAY = {"deepsparse": "DeepSparse", "onnxruntime": "ONNX Runtime", "torch": "the torch engine"}


def rss_mb() -> float:
    """This process's resident memory (``VmRSS`` of ``/proc/self/status``), MiB; its peak where that is not
    readable (``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def service_budget(max_start_s: float | None, max_rss_mb: float | None, *, models: int, models_left: int,
                   embedded: bool = False) -> Budget:
    """The share of the service's budget for the next model's engine (of ``models`` loaded by the process, of which
    ``models_left`` are still to load, this one included): ``max_start_s / models`` seconds to build, and what is
    left of ``max_rss_mb`` after this process's resident memory now, split equally among the models left (never
    below 0). The seconds are a fixed share, not what is left of the process's own start: imports and a loaded
    machine cost every engine alike and would otherwise decide the choice. ``None`` leaves that side unbounded.

    ``embedded``: the models load into a process that is not the service (the in-process scorer of ``annotate`` and
    ``train``, a benchmark), whose memory holds other work, e.g. a student in training: the memory share is then the
    service's own, ``max_rss_mb / models``, as a fixed share too, not what that process leaves of it."""
    start = None if max_start_s is None else max_start_s / max(1, models)
    if max_rss_mb is None:
        rss = None
    elif embedded:
        rss = max_rss_mb / max(1, models)
    else:
        rss = max(0.0, max_rss_mb - rss_mb()) / max(1, models_left)
    return Budget(start_s=start, rss_mb=rss)


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
                  shapes: tuple[tuple[int, int], ...], compile: str = "startup", buckets: int | None = None) -> dict:
    """The facts that decide ``auto``'s choice (see the module docstring), as a JSON-able dict.

    Args:
        graphs: the graph file each candidate would run (``None``: it has none); hashed by content.
        int8: the graph form of each candidate (:func:`service.engines.int8_mode`).
        threads: the engine threads setting; ``None`` (all cores) is recorded as the cores this process may use.
        shapes: the ``(rows, tokens)`` timing batches.
        compile, buckets: DeepSparse's compile policy and its number of buckets (they decide its projected cost).
    """
    cpu = cpu_facts()
    return {"format": SELECTION_FORMAT, "cpu": cpu["model"], "cpu_flags": cpu["flags"],
            "threads": threads or cpu["cores"], "engines": engine_versions(),
            "graphs": {kind: (file_digest(path) if path is not None else None) for kind, path in sorted(graphs.items())},
            "int8": dict(sorted(int8.items())), "task": task, "shapes": [list(x) for x in shapes], "compile": compile,
            "buckets": buckets}


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
    if record.get("key") != key or not isinstance(record.get("costs"), dict):
        return None
    return record


def save_record(cache_dir: Path, key: dict, measurement: dict) -> Path:
    """Store ``measurement`` (``costs``, ``rows_per_s``, ...) for ``key``, written atomically; its path."""
    path = record_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**measurement, "key": key}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (``2026-11-28T12:00:00+00:00``)."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def engine_cost(engine, shapes: tuple[tuple[int, int], ...], *, build_s: float, rss_before_mb: float,
                compile: str = "startup") -> dict:
    """What ``engine`` costs a warm start, measured on it (just built in this process):

    - ONNX Runtime: ``projected_start_s`` is the session's build time, ``projected_rss_mb`` the resident memory
      added by the build and one call on the largest of ``shapes`` (the activations' arena);
    - DeepSparse: the two smallest buckets are compiled and measured (seconds, memory added); the second is
      the per-bucket figure (the first also pays the runtime's one-time set-up, the remainder), projected over
      every bucket: ``build + first + (buckets - 1) x second`` seconds where every bucket compiles at start-up
      (``compile="startup"``), ``build + first`` otherwise; memory ``build + first + (buckets - 1) x second``
      either way (a lazily compiled bucket is paid when traffic reaches it). The smallest buckets compile
      fastest and hold the least, so the projection is a lower bound of DeepSparse's cost.

    Returns:
        ``{"build_s", "projected_start_s", "projected_rss_mb", ...}`` (seconds, MiB), plus for DeepSparse
        ``buckets``, ``bucket_compile_s`` and ``bucket_rss_mb`` (the second bucket's).
    """
    import numpy as np

    name = engine.name
    if name == "deepsparse":
        base = rss_mb()
        buckets = engine.all_buckets()
        measured = []
        for rows, seq_len in buckets[:2]:
            before, began = rss_mb(), time.perf_counter()
            engine.compile_bucket(rows, seq_len)
            measured.append((time.perf_counter() - began, max(0.0, rss_mb() - before)))
        (first_s, first_mb), (each_s, each_mb) = measured[0], measured[-1]
        n = len(buckets)
        start = build_s + first_s + ((n - 1) * each_s if compile == "startup" else 0.0)
        rss = (base - rss_before_mb) + first_mb + (n - 1) * each_mb
        return {"build_s": round(build_s, 2), "projected_start_s": round(start, 1), "projected_rss_mb": round(rss),
                "buckets": n, "bucket_compile_s": round(each_s, 2), "bucket_rss_mb": round(each_mb, 1),
                "compile": compile}
    rows, seq_len = max(shapes, key=lambda s: s[0] * s[1])
    feed = {"input_ids": np.full((rows, seq_len), 1000, dtype=np.int64),
            "attention_mask": np.ones((rows, seq_len), dtype=np.int64),
            "token_type_ids": np.zeros((rows, seq_len), dtype=np.int64)}
    engine({k: v for k, v in feed.items() if k in engine.input_names})
    return {"build_s": round(build_s, 2), "projected_start_s": round(build_s, 1),
            "projected_rss_mb": round(max(0.0, rss_mb() - rss_before_mb))}


def choose(record: dict, budget: Budget) -> tuple[str | None, str, bool]:
    """``auto``'s decision from a measurement ``record`` (``costs``, ``rows_per_s``) under ``budget``.

    Returns ``(engine, why, stale)``: the fastest candidate whose projected cost fits (the only one that fits, the
    cheapest in memory when none fits), a sentence saying why, and whether the record cannot decide it (two or
    more candidates fit but one was not timed: measure again). ``engine`` is ``None`` when no candidate built.
    """
    costs, rates = record.get("costs", {}), record.get("rows_per_s", {})
    if not costs:
        return None, "no candidate engine built", False
    excess = {k: budget.excess(c) for k, c in costs.items()}
    fits = [k for k in costs if not excess[k]]
    out = "; ".join(f"{_DISPLAY[k]} over budget ({', '.join(v)})" for k, v in excess.items() if v)
    if not fits:
        cheapest = min(costs, key=lambda k: costs[k]["projected_rss_mb"])
        return cheapest, f"no engine fits the budget ({out}): {_DISPLAY[cheapest]} costs the least memory", False
    if len(fits) == 1:
        reason = f"the only engine within the budget ({out})" if out else "the only candidate that built"
        return fits[0], reason, False
    if any(k not in rates for k in fits):
        return None, "", True
    best = max(fits, key=rates.get)
    timed = ", ".join(f"{_DISPLAY[k]} {rates[k]}" for k in sorted(fits, key=rates.get, reverse=True))
    return best, f"the fastest within the budget (rows/s: {timed})" + (f"; {out}" if out else ""), False


def _measure_candidates(source, options: dict, candidates: tuple[str, ...], shapes: tuple[tuple[int, int], ...],
                        budget: dict, compile: str, log_level: int) -> dict:
    """Child-process body of :func:`measure_in_child`: build each candidate, measure its cost, time those that
    fit ``budget`` (when two or more do), close them, report."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s [auto timing]: %(message)s")
    from service.engines import _build, int8_mode, measure_rate
    from service.onnx_export import onnx_for

    budget_ = Budget(**budget)
    for name in candidates:  # graphs first: an export imports torch, whose memory is no engine's
        try:
            onnx_for(source, options["cache_dir"], options["task"],
                     int8=int8_mode(name, source, options["quantization"]))
        except Exception:  # noqa: BLE001 - the build below reports it
            pass
    rates: dict[str, float] = {}
    errors: dict[str, str] = {}
    int8: dict[str, str] = {}
    costs: dict[str, dict] = {}
    fitting = {}
    for name in candidates:
        before, began = rss_mb(), time.perf_counter()
        try:
            engine = _build(name, source, **{**options, "compile": "deferred"})  # only what is measured compiles
            int8[name] = engine.int8
            costs[name] = engine_cost(engine, shapes, build_s=time.perf_counter() - began, rss_before_mb=before,
                                      compile=compile)
        except Exception as exc:  # noqa: BLE001 - an engine that builds but cannot run is not a candidate
            errors[name] = str(exc)
            continue
        over = budget_.excess(costs[name])
        if over:
            logging.getLogger(__name__).info("%s over budget (%s): not timed", _DISPLAY[name], ", ".join(over))
            engine.close()
            continue
        fitting[name] = engine
    if len(fitting) > 1:
        for name, engine in fitting.items():
            try:
                rates[name] = round(measure_rate(engine, shapes=shapes), 1)
            except Exception as exc:  # noqa: BLE001
                errors[name] = f"failed its timing run: {exc}"
                costs.pop(name, None)
    for engine in fitting.values():
        engine.close()
    return {"rows_per_s": rates, "errors": errors, "int8": int8, "costs": costs, "budget": budget}


def measure_in_child(source, options: dict, candidates: tuple[str, ...], *, shapes: tuple[tuple[int, int], ...],
                     budget: Budget, compile: str = "startup") -> dict:
    """Build ``candidates`` for ``source`` in a child process, measure their costs and time those within
    ``budget`` (see the module docstring).

    The child is ``python -m service.engines.selection`` (a fresh interpreter, like ``multiprocessing``'s
    ``spawn``, but independent of the parent's ``__main__``, so a script without a main guard can use ``auto``);
    its logs go to this process's stderr.

    Args:
        source: the :class:`~service.sources.ModelSource`.
        options: :func:`service.engines._build`'s keyword arguments (cache_dir, batch_size, max_length, ...).
        shapes: the ``(rows, tokens)`` timing batches; compile: DeepSparse's compile policy in service.

    Returns:
        ``{"costs": {kind: engine_cost}, "rows_per_s": {kind: rows/s}, "errors": {kind: message}, "int8": {kind:
        form}, "measure_seconds": s}``: costs of the candidates that built and ran, rates of those timed (none
        when fewer than two fit the budget), and the reasons of those that did not build.

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
                            "shapes": tuple(map(tuple, shapes)), "budget": asdict(budget), "compile": compile,
                            "log_level": level})
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
    result = _measure_candidates(request["source"], request["options"], request["candidates"], request["shapes"],
                                 request["budget"], request["compile"], request["log_level"])
    Path(result_path).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    import sys

    _child_main(sys.argv[1])
