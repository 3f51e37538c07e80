"""Process-level tuning that fedmq applies once (opt out with FEDMQ_TUNE_MALLOC=0).

glibc's malloc hands buffers of a few MB back to the OS as soon as they are freed (its dynamic
mmap and trim thresholds), so the next tensor of that size page-faults all over again. A model
that crosses the wire every step makes several such buffers per step, and on virtual machines a
page fault is expensive (here: 7.5 ms to allocate and fill 1.7 MB, 0.03 ms once tuned). Raising
the thresholds keeps that memory in the process for reuse, as PyTorch CPU deployments get by
preloading jemalloc or tcmalloc. It changes speed, never results; PyTorch code in the same
process benefits alike.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 * 1024 * 1024   # allocations below this come from the heap
TRIM_THRESHOLD = 512 * 1024 * 1024  # free memory kept before returning it to the OS

_state: dict[str, object] = {"tuned": None}


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds; True if applied. Idempotent."""
    if _state["tuned"] is not None:
        return bool(_state["tuned"])
    applied = False
    if os.environ.get("FEDMQ_TUNE_MALLOC", "1") != "0":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = getattr(libc, "mallopt", None)
            if mallopt is not None:
                applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                    bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except OSError:  # not glibc (macOS, musl): nothing to tune
            applied = False
    _state["tuned"] = applied
    return applied


def describe() -> str:
    if _state["tuned"]:
        return (f"glibc malloc tuned by fedmq (mmap threshold {MMAP_THRESHOLD >> 20} MiB, "
                f"trim threshold {TRIM_THRESHOLD >> 20} MiB)")
    return "default allocator"
