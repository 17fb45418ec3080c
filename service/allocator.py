"""The C allocator's part in the service's memory: a fixed ``mmap`` threshold so large buffers go back to the OS.

Under concurrent load the engines allocate and free activation buffers of a few to a few hundred MiB at every
call (ONNX Runtime's arena gives its chunks back after each call with ``ZSC_ORT_ARENA=shrink``). glibc's ``malloc``
serves a request above its ``mmap`` threshold (128 KiB at first) with its own mapping and unmaps it on ``free``,
but it *raises* that threshold to the size of every mapped block freed (up to 32 MiB on 64-bit; the "dynamic mmap
threshold", glibc ``malloc/malloc.c``, since 2.x): after the first large buffers, the next ones come from the heap,
whose freed pages are kept and fragmented by smaller allocations between them, and resident memory climbs for the
whole run. Fixing the threshold (``mallopt(M_MMAP_THRESHOLD, ...)``, which also turns the dynamic adjustment off,
see ``mallopt(3)``) keeps every buffer above it in its own mapping, returned whole when freed.

Measured by ``benchmarks/load.py`` (16 clients x 60 s, docs/speed.md#load) with ONNX Runtime's arena in ``shrink``
mode and no token cap: glibc's default let the server's resident memory grow by x1.45-1.59 from the first to the
last 15 s (peaks 1.08-1.23 GB); a 1 MiB threshold gave x1.00-1.18 (peaks 0.71-0.72 GB) at the same throughput.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

#: ``M_MMAP_THRESHOLD``'s parameter number in glibc's ``<malloc.h>``.
_M_MMAP_THRESHOLD = -3
#: glibc reads this environment variable at start-up (``mallopt(3)``); when set, it is left as the operator set it.
ENV_VARIABLE = "MALLOC_MMAP_THRESHOLD_"


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p  # only glibc has it (not musl, not macOS)
    except (OSError, AttributeError):
        return None
    return libc


def set_mmap_threshold(kib: int) -> dict:
    """Serve every allocation of ``kib`` KiB or more from its own ``mmap`` (glibc only; process-wide).

    Call it before the models load: it applies to allocations made after it. ``kib`` 0 leaves glibc's dynamic
    threshold as it is; so does an operator's ``MALLOC_MMAP_THRESHOLD_`` environment variable, which wins.

    Returns:
        what ``GET /info`` reports: ``{"malloc_mmap_threshold_kib": int | None, "applied_by": "service" |
        "environment" | None, "note": str}``; ``None`` where nothing was set (not glibc, ``kib`` 0).

    Raises:
        ValueError: ``kib`` < 0 or over 32 MiB (glibc's largest, ``HEAP_MAX_SIZE / 2``).
    """
    if not 0 <= kib <= 32 * 1024:
        raise ValueError(f"the mmap threshold must be 0 to 32768 KiB, got {kib}")
    if os.environ.get(ENV_VARIABLE):
        return {"malloc_mmap_threshold_kib": int(os.environ[ENV_VARIABLE]) // 1024 if
                os.environ[ENV_VARIABLE].isdigit() else None, "applied_by": "environment",
                "note": f"{ENV_VARIABLE} set by the operator (ZSC_MALLOC_MMAP_THRESHOLD_KIB not applied)"}
    if kib == 0:
        return {"malloc_mmap_threshold_kib": None, "applied_by": None,
                "note": "ZSC_MALLOC_MMAP_THRESHOLD_KIB=0: glibc's dynamic threshold"}
    libc = _libc()
    if libc is None:
        return {"malloc_mmap_threshold_kib": None, "applied_by": None,
                "note": "not glibc: the C library's own policy"}
    if libc.mallopt(_M_MMAP_THRESHOLD, kib * 1024) != 1:
        logger.warning("mallopt(M_MMAP_THRESHOLD, %d KiB) failed: glibc's dynamic threshold stays", kib)
        return {"malloc_mmap_threshold_kib": None, "applied_by": None, "note": "mallopt refused the value"}
    logger.info("glibc %s: allocations of %d KiB or more get their own mapping, returned to the OS when freed",
                libc.gnu_get_libc_version().decode(), kib)
    return {"malloc_mmap_threshold_kib": kib, "applied_by": "service",
            "note": "allocations at or above it are mmapped and returned to the OS when freed"}
