"""Process-level settings for CPU inference: glibc's allocator.

glibc hands every allocation above a *dynamic* threshold (128 KiB, rising to at most 32 MiB) its own
``mmap`` and returns it to the kernel on ``free``. A ViT forward pass allocates and frees activations of
tens of MiB many times per batch, so each of them comes back as fresh pages that the kernel must fault in
and zero: on the 2-core CI machine that was ~1 s of system time per WinCLIP ViT-B/16+ image (of ~3.5 s).
:func:`retain_freed_memory` raises both thresholds so freed blocks stay in the heap and are reused: the
process keeps its peak working set (which a scoring process touches again on the next batch anyway) and
the system time dropped to 0.05-0.2 s per image (a one-off ``os.times`` measurement around
``detector.score``; the pipeline benchmark's figures with and without it are in the README).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger(__name__)

#: mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: blocks below this size come from (and return to) the heap instead of their own mmap
DEFAULT_RETAIN_BYTES = 1 << 30


@functools.cache
def retain_freed_memory(threshold_bytes: int = DEFAULT_RETAIN_BYTES) -> bool:
    """Keep freed blocks below ``threshold_bytes`` for reuse (glibc ``mallopt``); once per process.

    Returns whether the allocator took the setting (False on a C library without ``mallopt``, e.g.
    musl or macOS, where it is a no-op). Call it in long-lived scoring processes before the first batch.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    value = min(int(threshold_bytes), 2**31 - 1)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))
    if not ok:
        logger.debug("mallopt refused a threshold of %d bytes", value)
    return ok
