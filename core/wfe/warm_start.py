"""Touch the heap a run's first input will need while the run starts up.

A process's first input touches most of its memory for the first time: a CPU model's
activations and each chunk's sums, several hundred MiB, which the kernel faults in and
zeroes (and a virtual machine's host backs) while the model waits. Later inputs reuse
that memory (:mod:`wfe.heap`) and do not pay again. So at the end of a process's first
input the free part of its heap (what its transient blocks used) is remembered for the
workflow (``heaps.json`` in wfe's cache folder), and the next run of that workflow
touches as much on a thread of its own as soon as it starts, while its main thread
imports torch and loads the model on the other core. Only heaps that stay in the
process are remembered: those of runs whose stages raised the heap's thresholds (a
CPU model does); tiling keeps freed memory going back to the system, and is left
alone.

``WFE_TOUCH_HEAP=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading

from wfe.cache import recall, remember
from wfe.heap import heap_usage, keeps_freed_memory, touch_heap
from wfe.workflow import Workflow

__all__ = ["HEAPS", "heap_key", "remember_heap", "touch_remembered_heap"]

log = logging.getLogger("wfe")

HEAPS = "heaps.json"

#: At most this share of the memory free now is touched ahead.
_SHARE_OF_FREE = 0.5

#: What this process has done: touched ahead, remembered. Only its first input touches
#: memory for the first time; a later run in the same process (the Python API) finds
#: the heap as the one before left it.
_done: set[str] = set()


def heap_key(workflow: Workflow, device: str, workers: int | None) -> str:
    """What the heap of a first input depends on, as far as the run knows before it
    starts: every stage and its parameters, the device asked for and the worker count."""
    digest = hashlib.sha256(json.dumps(workflow.parameters(), sort_keys=True,
                                       default=str).encode())
    return f"{digest.hexdigest()}|{device}|{workers or os.cpu_count()}"


def _free_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def touch_remembered_heap(key: str) -> threading.Thread | None:
    """Start touching as much heap as the last run under ``key`` had free after its
    first input (at most half the memory free now); the thread doing it, or None when
    nothing is remembered, it is turned off or cannot be done, or this process has
    been here before. Call before starting threads (see :func:`wfe.heap.touch_heap`)."""
    if os.environ.get("WFE_TOUCH_HEAP", "1") == "0" or "touched" in _done:
        return None
    _done.add("touched")
    remembered = recall(HEAPS).get(key)
    if not isinstance(remembered, int):
        return None
    nbytes = min(remembered, int(_free_memory() * _SHARE_OF_FREE))
    if nbytes < (64 << 20):
        return None
    thread = touch_heap(nbytes)
    if thread is not None:
        log.info("touching %d MiB of heap for the first input (as the last run's)", nbytes >> 20)
    return thread


def remember_heap(key: str) -> None:
    """Remember the heap's free memory now, after the process's first input, under
    ``key``; nothing after a later input (its heap was warm), when freed memory goes
    back to the system (no stage raised the thresholds) or the size cannot be read."""
    if "remembered" in _done:
        return
    _done.add("remembered")
    usage = heap_usage()
    if usage is not None and keeps_freed_memory():
        remember(HEAPS, key, usage.free)
