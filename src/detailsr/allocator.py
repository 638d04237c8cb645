"""Keep freed memory in the process, so that CPU inference does not fault its pages in again.

A network's forward allocates and frees tensors of tens of MiB, layer after layer. glibc serves
such blocks with `mmap` and gives them back to the kernel on `free`, so every layer maps fresh
pages and the kernel zero-fills them on first touch: on ESC-light x4 at 256² (1 thread) a third
of the time went to that (`sys` time), not to arithmetic. Raising glibc's mmap and trim thresholds
makes freed blocks reusable from the heap instead; PyTorch's CPU tuning guide recommends an
allocator that caches (jemalloc, tcmalloc) for the same reason. Peak memory stays that of the
largest live set plus what the heap keeps of its free blocks.

The command line turns this on; library users call `keep_freed_memory()` themselves (it changes
the whole process). Elsewhere than glibc it does nothing. `bound_kernel_caches()` likewise bounds
the memory oneDNN keeps for its compiled kernels.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

# glibc caps the mmap threshold at 32 MiB on 64-bit systems; larger blocks are mapped anyway.
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 2**31 - 1  # the largest int mallopt takes
_TOP_PAD = 256 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc malloc to reuse freed blocks (once per process). True when it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    done = all(
        mallopt(param, value) == 1
        for param, value in ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
                             (_M_TOP_PAD, _TOP_PAD))
    )
    log.debug("malloc tuned to keep freed memory: %s", done)
    return done


# oneDNN (convolutions, and the GEMMs of `models.layers.linear`) keeps a compiled kernel for each
# tensor shape, in two caches of 1024 entries: ideep's and oneDNN's own.
_KERNEL_CACHES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")
_KERNEL_CACHE_ENTRIES = 64


def bound_kernel_caches() -> None:
    """Keep 64 of oneDNN's per-shape kernels instead of 1024, unless the environment sets its own.

    Every image size and every border tile adds a set of kernels: 30 images of different sizes
    made CAMixerSR-S's process grow by 0.3 GB more than with 64 entries, and an 8K frame's tiles
    peaked at 1.75 against 1.60 GiB (one pair of runs; single runs vary by 0.1-0.2 GiB), at the same
    speed (64 entries hold the shapes of a few sizes). Takes effect when called before the first
    convolution of the process."""
    for name in _KERNEL_CACHES:
        os.environ.setdefault(name, str(_KERNEL_CACHE_ENTRIES))


def release_freed_memory() -> None:
    """Give freed heap memory back to the system (glibc `malloc_trim`), so that the resident set
    measures what the next forward needs from scratch instead of pages earlier ones left."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: measurements are then lower bounds
        pass
