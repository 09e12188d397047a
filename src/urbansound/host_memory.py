"""How this process's C library hands out host memory: keep freed blocks for reuse (glibc)."""

from __future__ import annotations

import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

# glibc's malloc parameters (mallopt in malloc.h) and the values keep_freed_host_memory sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HOST_MMAP_THRESHOLD = 32 * 2**20  # the largest mallopt accepts on 64-bit systems
HOST_TRIM_THRESHOLD = 512 * 2**20  # free memory kept at the top of the heap before it goes back to the system
# A user who picked the allocator (a preloaded jemalloc or tcmalloc, glibc's tunables) keeps their choice.
ALLOCATOR_VARIABLES = ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_host_memory() -> bool:
    """Have glibc's malloc keep freed blocks (up to 32 MB each, 512 MB in all) for reuse instead of handing
    them back to the operating system. Process-wide; returns whether it was applied.

    Why: by default glibc gives large blocks back (unmapped, or trimmed off the heap) as they are freed, so
    the activations of every CPU training step arrive in fresh pages that the kernel must fault in and zero:
    a 10-epoch training run of the default model on 2 cores (a VM) took 3.1 M page faults and 62.9 s, and
    with the memory kept 0.16 M and 46.9 s, with the same losses (benchmarks/RESULTS.md). Written by hand
    because PyTorch has no CPU caching allocator to switch on, and jemalloc or tcmalloc must be preloaded
    before the process starts.

    Applied only with glibc (Linux), and not when the user chose the allocator (LD_PRELOAD, GLIBC_TUNABLES or
    MALLOC_*_ variables set).
    """
    if platform.libc_ver()[0] != "glibc" or any(os.environ.get(name) for name in ALLOCATOR_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    applied = libc.mallopt(_M_MMAP_THRESHOLD, HOST_MMAP_THRESHOLD) == 1
    applied = libc.mallopt(_M_TRIM_THRESHOLD, HOST_TRIM_THRESHOLD) == 1 and applied
    if applied:
        logger.debug("glibc malloc keeps freed blocks for reuse (mmap and trim thresholds raised)")
    return applied
