"""What this machine's CPU is: model, flags and the cores this process may use (read at run time, never assumed)."""

from __future__ import annotations

import os
from pathlib import Path


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
