"""The machine a benchmark ran on, printed and stored next to every figure (one definition for all benchmarks)."""

from __future__ import annotations

import os
import platform

#: The instruction-set flags that decide int8/fp32 inference speed on x86 (and so which engine wins).
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_facts() -> dict:
    """``{"cpu": model, "cores": int, "flags": "avx2, avx512f, ..." (the :data:`SIMD_FLAGS` present, or "none"),
    "all_flags": [...], "load_average": [1, 5, 15 min], "python": version}``, read now from ``/proc/cpuinfo``
    (through :func:`service.cpu.cpu_facts`, the same reading ``engine=auto`` keys its measurement on).
    ``cores`` is the CPUs this process may run on."""
    from service.cpu import cpu_facts as service_cpu_facts

    facts = service_cpu_facts()
    present = [flag for flag in SIMD_FLAGS if flag in facts["flags"]]
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"cpu": facts["model"], "cores": facts["cores"], "flags": ", ".join(present) or "none",
            "all_flags": facts["flags"], "load_average": load, "python": platform.python_version()}


def cpu_line(facts: dict | None = None) -> str:
    """One line for a report's header: ``model, N cores, flags ..., load a/b/c``."""
    facts = facts or cpu_facts()
    load = "/".join(f"{x:.2f}" for x in facts["load_average"]) if facts.get("load_average") else "?"
    return f"{facts['cpu']}, {facts['cores']} cores, flags {facts['flags']}, load {load}"
