"""service/allocator.py: the fixed mmap threshold, checked on glibc's own books (``mallinfo2``) in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from service.allocator import _libc, set_mmap_threshold

# A fresh interpreter: frees a 16 MiB block (which, under glibc's dynamic threshold, raises the threshold to 16 MiB),
# then holds a 4 MiB block and reports the bytes glibc holds in mmapped blocks (mallinfo2().hblkhd).
PROBE = r"""
import ctypes, json, sys
from service.allocator import set_mmap_threshold
info = set_mmap_threshold(int(sys.argv[1]))
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(16 << 20))
before = libc.mallinfo2().hblkhd
block = libc.malloc(4 << 20)
ctypes.memset(block, 1, 4 << 20)
held = libc.mallinfo2().hblkhd - before
libc.free(block)
print(json.dumps({"info": info, "mmapped_bytes": held}))
"""


def probe(kib: int, env: dict | None = None) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, str(kib)], capture_output=True, text=True, check=True,
                            env={**os.environ, **(env or {})})
    return json.loads(result.stdout)


needs_glibc = pytest.mark.skipif(_libc() is None, reason="the mmap threshold is a glibc setting; this C library is "
                                 "not glibc")


@needs_glibc
def test_a_fixed_threshold_keeps_large_blocks_mmapped_after_a_larger_one_was_freed():
    fixed = probe(1024)
    assert fixed["info"]["applied_by"] == "service" and fixed["info"]["malloc_mmap_threshold_kib"] == 1024
    assert fixed["mmapped_bytes"] >= 4 << 20  # its own mapping: unmapped whole when freed
    dynamic = probe(0)  # glibc's default: the freed 16 MiB block raised the threshold over 4 MiB
    assert dynamic["info"]["applied_by"] is None and dynamic["mmapped_bytes"] == 0


@needs_glibc
def test_the_operators_environment_variable_wins():
    out = probe(1024, {"MALLOC_MMAP_THRESHOLD_": str(8 << 20)})  # 8 MiB: the 4 MiB block comes from the heap
    assert out["info"]["applied_by"] == "environment" and out["info"]["malloc_mmap_threshold_kib"] == 8192
    assert out["mmapped_bytes"] == 0


def test_out_of_range_is_refused():
    with pytest.raises(ValueError, match="0 to 32768 KiB"):
        set_mmap_threshold(-1)
    with pytest.raises(ValueError, match="0 to 32768 KiB"):
        set_mmap_threshold(40000)
