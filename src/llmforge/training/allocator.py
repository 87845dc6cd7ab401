"""Keep freed memory for reuse during CPU training (glibc malloc settings).

glibc serves every allocation above 32 MB with a fresh mmap and returns it on free, so each training
step page-faults its way through new logits, gradients and activations again: for GPT-2 124M on a CPU
that was a quarter of the step time (docs/performance.md). Switching mmap off and raising the trim
threshold makes freed blocks reusable. The price: the process keeps its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_done = False


def keep_freed_memory() -> bool:
    """Apply the settings once per process; False where the C library is not glibc (nothing changes)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**30))
    return _done
