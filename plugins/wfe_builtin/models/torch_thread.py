"""One thread for all of a process's torch work.

torch runs a CPU operation on an OpenMP team that belongs to the thread calling it:
that thread plus ``torch.get_num_threads() - 1`` workers, kept for the thread's
lifetime. GNU OpenMP counts the threads of every team in the process, and when they
outnumber the cores its workers stop spinning between parallel regions and go to
sleep, so each of the thousands of regions in a forward pass (every convolution,
normalisation and activation) waits for them to be woken. Calling a model from
dask's worker threads made a team per thread: on the 2-core development machine the
same 81 windows took 1.9-2.0 s called from a second thread instead of 1.6-1.7 s from
the first, with 41,600 context switches against 1,100. Loading and calling every
model on this one thread keeps a single team; the callers (dask's workers, each with
a batch ready) queue here, which also serialises the forward passes as one pass per
process at a time needs: torch already uses every core.

Before the thread starts, the process's heap settings are fixed
(:func:`wfe.heap.fix_heap_thresholds`, as ``wfe run`` does first thing): a thread
started earlier would allocate from an arena of its own, in which a forward pass's
large buffers are mapped afresh for every batch whatever the thresholds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from wfe.heap import fix_heap_thresholds

__all__ = ["on_torch_thread"]

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_ident: int | None = None
_start = threading.Lock()


def _remember_thread() -> None:
    global _ident
    _ident = threading.get_ident()


def on_torch_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, run on the process's torch thread; its result or its
    exception. Called from the torch thread itself, it runs in place."""
    global _executor
    if threading.get_ident() == _ident:
        return fn(*args, **kwargs)
    with _start:
        if _executor is None:
            fix_heap_thresholds()
            _executor = ThreadPoolExecutor(1, thread_name_prefix="wfe-torch",
                                           initializer=_remember_thread)
    return _executor.submit(fn, *args, **kwargs).result()
