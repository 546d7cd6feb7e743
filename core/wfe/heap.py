"""glibc's heap settings for a run: freed pixel blocks go back to the system, and a CPU
model's forward pass reuses its buffers instead of mapping them afresh (Linux).

Tiling. glibc raises its mmap threshold to the largest block freed so far (up to
32 MiB) and its trim threshold to twice that, so once a few multi-megabyte chunk
buffers have come and gone, later ones are carved from the heap and what is freed
stays in the process. Peak RSS then creeps up with the number of chunks: tiling a
slide grew by 17-22 % from 5,000² to 20,000² px. Fixing the mmap threshold (64 MiB)
switches that adjustment off, and freed memory at the top of the heap goes back to
the system again (growth 8-14 %).

Inference. A CPU forward pass allocates and frees its activations for every batch:
with a batch of eight 512² windows, blocks of up to 128 MiB and about 1 GiB in all.
Mapped afresh, each is page-faulted and zeroed again; that was a third of a pass's
time (16 windows of the demo U-Net: 2.36 s with 300,000 page faults, 1.46 s with
none once they were reused). Two settings stop it: while a model is loaded, the
thresholds are raised to fit its pass (:func:`reuse_blocks_up_to`, which the model
loader calls with the sizes it measured), and every thread allocates from one arena
(:func:`fix_heap_thresholds`): a thread's own arena grows in heaps of at most
64 MiB, so any larger block a dask worker asked for was mapped afresh whatever the
threshold. ``wfe run`` of the demo U-Net over a 4096² image (whole process): 2.0-2.2
million page faults and 5.2-5.9 s of system time before, 0.43-0.55 million and
1.5-1.8 s after.

Huge pages. What a process's first input still faults in (its forward passes' buffers,
touched for the first time: about 430 MiB for the demo U-Net in batches of four) costs
a fault per 4 KiB page. torch's CPU allocator can back its large blocks (2 MiB and
more) with transparent huge pages, a fault per 2 MiB, when ``THP_MEM_ALLOC_ENABLE``
is set before its first allocation (:func:`use_huge_pages`, which ``wfe`` calls first
thing): the first input of ``wfe run`` over a 4096² image took 2.65-2.71 s to compute
instead of 2.73-2.85 s (four runs each, in turns), with 13,000 page faults instead of
120,000-126,000, and the whole command 0.3 s less.

Touching ahead. What the first input needs can be faulted in before it runs, on a
core the start-up leaves idle (:func:`touch_heap`; :mod:`wfe.warm_start` decides how
much): the memory stays in the heap, and the first input's blocks are carved from it.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import Any, NamedTuple

__all__ = ["HeapUsage", "fix_heap_thresholds", "heap_usage", "keeps_freed_memory",
           "reuse_blocks_up_to", "touch_heap", "use_huge_pages"]

#: ``mallopt`` parameters of glibc.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: mallopt takes a C int: thresholds are capped below 2 GiB.
_MAX_THRESHOLD = (1 << 31) - 1

#: The mmap and trim thresholds set so far (bytes; 0: none), so that they are only
#: ever raised.
_mmap_threshold = 0
_trim_threshold = 0


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33 and later)."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc() -> Any:
    """The C library the process runs on (glibc on Linux), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _mallopt() -> Any:
    """glibc's ``mallopt``, or None off Linux or without it."""
    try:
        mallopt = _libc().mallopt
    except AttributeError:
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt


def fix_heap_thresholds(mmap_threshold: int = 64 << 20) -> bool:
    """Fix glibc's mmap threshold (bytes) and make every thread allocate from one arena;
    whether it was set (False off glibc/Linux). Once per process: later calls keep
    what is set (a model may have raised it).

    The arena setting counts only for threads that have not allocated yet: call it
    before starting any (``wfe run`` does, first thing).
    """
    global _mmap_threshold
    mallopt = _mallopt()
    if mallopt is None:
        return False
    if _mmap_threshold:
        return True
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_ARENA_MAX, 1))
    if ok:
        _mmap_threshold = mmap_threshold
    return ok


def reuse_blocks_up_to(nbytes: int, working_set: int) -> bool:
    """Let freed blocks of up to ``nbytes``, and up to ``working_set`` bytes of them in
    all, be reused from the heap instead of mapped, faulted in and zeroed anew; whether
    the thresholds are set so.

    For a CPU model's forward pass, whose activations are allocated and freed for every
    batch: the memory it needs stays in the process between batches (it is needed
    again at once). Both thresholds matter: blocks above the mmap threshold are mapped
    afresh each time, and freed memory at the top of the heap beyond the trim threshold
    goes back to the system, to be faulted in again by the next batch: the demo model
    over 81 windows in batches of one, all its blocks under the 64 MiB mmap threshold,
    took 3.8-4.0 s with glibc's trim threshold against 2.1 s with it raised. Only ever
    raises them: a run that loads no model keeps the lower ones that keep tiling's
    memory flat.
    """
    global _mmap_threshold
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = True
    if nbytes >= _mmap_threshold:
        # A little above the block: glibc maps a block as large as its threshold.
        nbytes = min(nbytes + (1 << 20), _MAX_THRESHOLD)
        ok = bool(mallopt(_M_MMAP_THRESHOLD, nbytes))
        if ok:
            _mmap_threshold = nbytes
    return ok and _keep_freed_up_to(max(working_set, 2 * _mmap_threshold), mallopt)


def _keep_freed_up_to(nbytes: int, mallopt: Any) -> bool:
    """Raise glibc's trim threshold to ``nbytes`` (never lower it): up to that much free
    memory at the top of the heap stays in the process; whether it is that high now."""
    global _trim_threshold
    nbytes = min(nbytes, _MAX_THRESHOLD)
    if nbytes > _trim_threshold and mallopt(_M_TRIM_THRESHOLD, nbytes):
        _trim_threshold = nbytes
    return _trim_threshold >= nbytes


def use_huge_pages() -> None:
    """Have torch back its large CPU tensors with transparent huge pages (Linux, where the
    kernel offers them on request); a setting of ``THP_MEM_ALLOC_ENABLE`` already in the
    environment wins (``0`` turns it off).

    torch reads the variable once, at its first allocation: call this before importing
    torch.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def keeps_freed_memory() -> bool:
    """Whether freed memory now stays in the process (a model raised the thresholds, or
    :func:`touch_heap` did) rather than going back to the system."""
    return _trim_threshold > 0


class HeapUsage(NamedTuple):
    """The process's heap (glibc's main arena, which every thread allocates from once
    :func:`fix_heap_thresholds` ran), in bytes."""

    size: int
    free: int


def heap_usage() -> HeapUsage | None:
    """The process's heap now; None off glibc 2.33+."""
    try:
        mallinfo2 = _libc().mallinfo2
    except AttributeError:
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return HeapUsage(int(info.arena), int(info.fordblks))


def touch_heap(nbytes: int) -> threading.Thread | None:
    """Grow the heap by ``nbytes`` and touch it on a thread of its own, then free it into
    the heap, where it stays for the process's later blocks; the thread, or None where
    it cannot be done (off glibc, heap thresholds not fixed, no memory).

    Memory a process touches for the first time is faulted in and zeroed by the
    kernel, and on a virtual machine first backed by the host: there, 800 MB took
    0.06 s to fill in one process and 1.1-1.7 s in the next. Touched while the process
    starts up on one core (importing torch), it costs the run nothing; touched by the
    first input's forward passes and chunk sums, it costs them that time. Call it
    after :func:`fix_heap_thresholds` and before starting other threads: the block is
    taken from the heap with the mmap threshold raised for that one call.
    """
    libc = _libc()
    mallopt = _mallopt()
    if libc is None or mallopt is None or not _mmap_threshold or nbytes <= 0:
        return None
    if not _keep_freed_up_to(nbytes + _mmap_threshold, mallopt):
        return None  # it would go straight back to the system
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # One block from the heap (above the mmap threshold it would be mapped, and unmapped
    # when freed): freed, it is split for whatever the run allocates next.
    mallopt(_M_MMAP_THRESHOLD, min(nbytes + (1 << 20), _MAX_THRESHOLD))
    block = libc.malloc(nbytes)
    mallopt(_M_MMAP_THRESHOLD, _mmap_threshold)
    if not block:
        return None

    def touch() -> None:
        step = 16 << 20
        for offset in range(0, nbytes, step):  # ctypes releases the GIL in each call
            ctypes.memset(block + offset, 0, min(step, nbytes - offset))
        libc.free(block)

    thread = threading.Thread(target=touch, name="wfe-touch-heap", daemon=True)
    thread.start()
    return thread
