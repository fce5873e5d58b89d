"""glibc malloc settings for a long-running, many-threaded daemon, made before any thread.

glibc gives each thread that allocates its own arena (up to 8 per CPU), and raises its mmap
threshold each time a large block is freed, after which megabyte buffers (an encoded
/metrics body) come from the heap and stay resident when freed. Measured with
``benchmarks/scale.py`` at 64 GPUs x 128 processes: 134 MB resident with glibc's defaults,
99 MB with at most 2 arenas and a fixed 128 KiB threshold (blocks above it are mapped and
returned to the system when freed), the same as ``MALLOC_ARENA_MAX=2`` and
``MALLOC_MMAP_THRESHOLD_=131072`` in the environment. A variable the user set wins; other C
libraries (musl) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("gpuprobe")

M_MMAP_THRESHOLD = -3  # <malloc.h>
M_ARENA_MAX = -8
# parameter, value, the environment variable that sets it (and then wins)
SETTINGS = ((M_ARENA_MAX, 2, "MALLOC_ARENA_MAX"),
            (M_MMAP_THRESHOLD, 128 * 1024, "MALLOC_MMAP_THRESHOLD_"))


def tune() -> dict[str, int]:
    """Apply :data:`SETTINGS` where glibc is the C library; the variables set, by name."""
    if not sys.platform.startswith("linux"):
        return {}
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    applied = {}
    for param, value, env in SETTINGS:
        if env in os.environ:
            continue
        if mallopt(param, value) == 1:
            applied[env] = value
    log.debug("malloc settings: %s", applied or "none")
    return applied
