"""Process-level settings that make CPU training faster; applied by the trainer on CPU.

glibc's malloc hands every large block (above a threshold that adapts up to 32 MiB) straight
back to the kernel when it is freed, and trims the heap's free top. A training step on CPU
allocates and frees the same few hundred MiB of activations and buffers every step, so each
step page-faults much of that memory in again. ``retain_freed_memory`` raises both
thresholds so freed blocks stay in the process and are reused. Measured on CPU-2 (ML-1M users
1–2999, HSTU 2×50, three interleaved runs each, 2026-11-24): system time of a 25 s run
2.6 → 1.5 s, epoch median 3.9 → 3.8 s, peak RSS 0.78 → 0.80 GB. Memory goes back to the
system only at exit. Other allocators (jemalloc, tcmalloc via LD_PRELOAD) and non-Linux
systems are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
RETAIN_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap; a 1 GiB free top is kept

@functools.cache  # once per process
def retain_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse; True if it took effect."""
    ok = False
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(M_MMAP_THRESHOLD, RETAIN_BYTES)) and \
                bool(libc.mallopt(M_TRIM_THRESHOLD, RETAIN_BYTES))
        except (OSError, AttributeError) as err:  # no libc to load, no mallopt in it
            log.debug("mallopt unavailable: %s", err)
    log.debug("retain freed memory (glibc mallopt): %s", ok)
    return ok
