"""Fix glibc's heap thresholds once per run: freed pixel blocks go back to the system,
and a forward pass's large buffers are reused instead of mapped afresh (Linux).

glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB) and
its trim threshold to twice that, so once a few multi-megabyte chunk buffers have come
and gone, later ones are carved from the heap and what is freed stays in the process.
Peak RSS then creeps up with the number of chunks: tiling a slide grew by 17-22 % from
5,000² to 20,000² px. Fixing the mmap threshold once switches that adjustment off
(the same as ``MALLOC_MMAP_THRESHOLD_`` in the environment), and freed memory at the
top of the heap goes back to the system again.

The value, 64 MiB, covers the buffers of a CPU forward pass (a batch of eight 512²
windows makes activations of 16-64 MiB): below the threshold they come from the heap
and are reused from batch to batch; above it each is mapped, page-faulted and zeroed
anew. ``wfe run`` of a U-Net over a 4096² image took 23.3 s of compute with 16 MiB,
20-21.6 s with glibc's default and 18.3 s with 64 MiB; tiling's peak RSS grew by
8-14 % from 5,000² to 20,000² px with 64 MiB, as with 16 MiB (default: 18-22 %).
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["fix_heap_thresholds"]

#: ``M_MMAP_THRESHOLD`` of glibc's ``mallopt``.
_M_MMAP_THRESHOLD = -3


def fix_heap_thresholds(mmap_threshold: int = 64 << 20) -> bool:
    """Fix glibc's mmap threshold (bytes); whether it was set (False off glibc/Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
